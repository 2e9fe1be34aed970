"""The native ONNX Runtime kernel of TopKMaskedAttention: headers, build, load.

``native_library_path()`` returns a custom-op library (``RegisterCustomOps``) built from
``trt_plugins/topkMaskedAttention/topkMaskedAttentionOrt.cpp`` and the CPU kernel, for
``SessionOptions.register_custom_ops_library``. It is compiled on first use into the
kernel cache (``sparsifiner.ops.native_build``) and reused while the sources, compiler
and CPU stay the same; ``build=False`` only looks for a finished build.

The library needs ONNX Runtime's C/C++ API headers, which the PyPI wheel does not ship.
They are looked up in this order:

1. ``$SPARSIFINER_ORT_INCLUDE``: the ``include`` folder of an ONNX Runtime release
   archive, or any folder holding ``onnxruntime_cxx_api.h``;
2. a system install (``/usr/include/onnxruntime``, ``/usr/local/include/onnxruntime``);
3. Debian's ``libonnxruntime-dev`` (trixie, Expat licence), downloaded once with
   ``apt-get download`` through a private sources list on the mirror this system's apt
   already uses (the system's apt setup is not changed) and unpacked into the cache.
   ``SPARSIFINER_ORT_FETCH=0`` turns the download off.

Without headers or a compiler, every entry point raises ``SparsifinerError`` saying what
to do. Importing this module imports neither onnxruntime nor a compiler.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from sparsifiner.errors import SparsifinerError
from sparsifiner.ops import native_build

INCLUDE_ENV = "SPARSIFINER_ORT_INCLUDE"
FETCH_ENV = "SPARSIFINER_ORT_FETCH"
LIBRARY_NAME = "libsparsifiner_topk_attention_ort.so"
SOURCES = ("topkMaskedAttentionOrt.cpp",)
HEADER = "onnxruntime_cxx_api.h"
# KernelComputeV2 (16) and ShapeInferContext_SetOutputTypeShape (17).
MIN_API_VERSION = 17
DEBIAN_SUITE = "trixie"
DEBIAN_PACKAGE = "libonnxruntime-dev"
SYSTEM_INCLUDES = ("/usr/include/onnxruntime", "/usr/local/include/onnxruntime")

_lock = threading.Lock()
_handles: dict = {}


def _api_version(folder: Path) -> int:
    text = (folder / "onnxruntime_c_api.h").read_text(errors="replace")
    match = re.search(r"#define\s+ORT_API_VERSION\s+(\d+)", text)
    return int(match.group(1)) if match else 0


def _header_folder(root: Path) -> Path | None:
    for folder in (root, root / "include", root / "include" / "onnxruntime", root / "onnxruntime"):
        if (folder / HEADER).is_file() and (folder / "onnxruntime_c_api.h").is_file():
            return folder
    return None


def headers_cache() -> Path:
    return native_build.cache_root() / "ort-headers"


def find_ort_headers() -> Path | None:
    """A folder with ONNX Runtime's C++ API headers (API >= 17) already on this machine, or None."""
    given = os.environ.get(INCLUDE_ENV)
    if given:
        folder = _header_folder(Path(given))
        if folder is None:
            raise SparsifinerError(f"${INCLUDE_ENV}={given} holds no {HEADER}: point it at the include/ folder "
                                   "of an ONNX Runtime release archive")
        if _api_version(folder) < MIN_API_VERSION:
            raise SparsifinerError(f"the ONNX Runtime headers in {folder} are API {_api_version(folder)}; "
                                   f"the native op needs {MIN_API_VERSION} (ONNX Runtime 1.17) or newer")
        return folder
    candidates = [Path(p) for p in SYSTEM_INCLUDES]
    if headers_cache().is_dir():
        candidates += sorted(headers_cache().glob("*/usr/include/onnxruntime"), reverse=True)
    for candidate in candidates:
        folder = _header_folder(candidate)
        if folder is not None and _api_version(folder) >= MIN_API_VERSION:
            return folder
    return None


def _debian_mirror() -> str | None:
    """The Debian archive URI this system's apt uses (deb822 .sources or one-line lists)."""
    texts = []
    for pattern in ("/etc/apt/sources.list", "/etc/apt/sources.list.d/*.sources", "/etc/apt/sources.list.d/*.list"):
        for path in sorted(Path("/").glob(pattern.lstrip("/"))):
            try:
                texts.append(path.read_text(errors="replace"))
            except OSError:
                continue
    for text in texts:
        for uri in re.findall(r"^\s*URIs:\s*(\S+)", text, re.M) + re.findall(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M):
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return None


def fetch_ort_headers() -> Path:
    """Download and unpack Debian trixie's libonnxruntime-dev into the cache; returns the header folder."""
    if os.environ.get(FETCH_ENV, "1") == "0":
        raise SparsifinerError(f"no ONNX Runtime headers found and ${FETCH_ENV}=0: set ${INCLUDE_ENV} to the "
                               "include/ folder of an ONNX Runtime release archive")
    apt, dpkg = shutil.which("apt-get"), shutil.which("dpkg-deb")
    mirror = _debian_mirror()
    if apt is None or dpkg is None or mirror is None:
        raise SparsifinerError(f"no ONNX Runtime headers found: set ${INCLUDE_ENV} to the include/ folder of an "
                               "ONNX Runtime release archive (fetching Debian's libonnxruntime-dev needs apt-get)")
    cache = headers_cache()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "lists" / "partial").mkdir(parents=True)
        (tmp / "cache" / "archives" / "partial").mkdir(parents=True)
        (tmp / "sources.list").write_text(f"deb {mirror} {DEBIAN_SUITE} main\n")
        opts = ["-q", "-o", f"Dir::Etc::SourceList={tmp / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
                "-o", f"Dir::State::Lists={tmp / 'lists'}", "-o", f"Dir::Cache={tmp / 'cache'}",
                "-o", "APT::Sandbox::User=root", "-o", "Debug::NoLocking=1"]
        for args in (["update"], ["download", DEBIAN_PACKAGE]):
            proc = subprocess.run([apt, *opts, *args], cwd=tmp, capture_output=True, text=True)
            if proc.returncode != 0:
                reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise SparsifinerError(f"fetching ONNX Runtime headers ({DEBIAN_PACKAGE}) failed: {reason}; "
                                       f"set ${INCLUDE_ENV} to the include/ folder of an ONNX Runtime release archive")
        debs = sorted(tmp.glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if not debs:
            raise SparsifinerError(f"apt-get download left no {DEBIAN_PACKAGE} package; set ${INCLUDE_ENV}")
        version = debs[-1].name.split("_")[1].replace("+", "_").replace(":", "_")
        unpacked = tmp / "unpacked"
        subprocess.run([dpkg, "-x", str(debs[-1]), str(unpacked)], check=True, capture_output=True)
        target = cache / version
        if not target.exists():
            os.replace(unpacked, target)
    folder = _header_folder(cache / version / "usr" / "include" / "onnxruntime")
    if folder is None:
        raise SparsifinerError(f"{DEBIAN_PACKAGE} {version} holds no {HEADER}; set ${INCLUDE_ENV}")
    return folder


def ort_headers(fetch: bool = True) -> Path:
    """The header folder: found on this machine, else fetched (see the module docstring)."""
    folder = find_ort_headers()
    if folder is not None:
        return folder
    if not fetch:
        raise SparsifinerError(f"no ONNX Runtime headers found: set ${INCLUDE_ENV}, or build with fetching allowed")
    return fetch_ort_headers()


def _build_dir(headers: Path) -> Path:
    files = native_build.kernel_files(SOURCES)
    headers_id = f"ort-api{_api_version(headers)}"
    tag = native_build.build_tag("ort", files, _flags(headers), headers_id)
    return native_build.cache_root() / "kernels" / tag


def _flags(headers: Path) -> list[str]:
    return [f"-I{headers}", f"-I{native_build.plugin_source_dir()}", "-fvisibility=hidden", "-Wall"]


def native_library_path(build: bool = True, verbose: bool = False) -> Path:
    """The built custom-op library; builds it (headers fetched if needed) unless build=False."""
    with _lock:
        if build:
            native_build.require_compiler("the ONNX Runtime TopKMaskedAttention library")
        headers = find_ort_headers()
        if headers is None:
            if not build:
                raise SparsifinerError("the native ONNX Runtime op is not built (no ONNX Runtime headers here yet)")
            headers = fetch_ort_headers()
        target = _build_dir(headers) / LIBRARY_NAME
        if target.is_file():
            return target
        if not build:
            raise SparsifinerError(f"the native ONNX Runtime op is not built in {target.parent}; "
                                   "call sparsifiner.runtime.ort_native.native_library_path()")
        files = native_build.kernel_files(SOURCES)
        return native_build.compile_library(target, files, _flags(headers), "the ONNX Runtime TopKMaskedAttention library",
                                            verbose=verbose)


def native_available() -> bool:
    """True when the library is already built for these sources (no build, no download)."""
    try:
        native_library_path(build=False)
        return True
    except SparsifinerError:
        return False


def _handle(path: Path):
    key = str(path)
    if key not in _handles:
        _handles[key] = ctypes.CDLL(key)
        _handles[key].SparsifinerTopKMaskedAttentionCpuCalls.restype = ctypes.c_int64
        _handles[key].SparsifinerTopKMaskedAttentionCpuIsa.restype = ctypes.c_char_p
    return _handles[key]


def native_op_calls(path: Path | None = None) -> int:
    """How many times the native op ran in this process (the library is loaded once per path)."""
    return int(_handle(path or native_library_path(build=False)).SparsifinerTopKMaskedAttentionCpuCalls())


def native_isa(path: Path | None = None) -> str:
    """The instruction set of the library's vector paths ("avx512" or "portable")."""
    return _handle(path or native_library_path(build=False)).SparsifinerTopKMaskedAttentionCpuIsa().decode()


def main() -> None:
    """Build the ONNX Runtime library and the torch binding; print where they are."""
    from sparsifiner.ops.cpu_binding import load_cpu_binding

    try:
        path = native_library_path(verbose=False)
        print(f"ONNX Runtime op: {path} ({native_isa(path)})")
        print(f"torch CPU op:    {load_cpu_binding()}")
    except SparsifinerError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
