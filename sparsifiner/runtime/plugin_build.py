"""Build the TopKMaskedAttention TensorRT plugin library with nvcc, cached by source hash.

``libsparsifiner_topk_attention_plugin.so`` holds the CUDA kernels
(``trt_plugins/topkMaskedAttention/*.cu``) and the IPluginV3 glue (``*Plugin*.cpp``). It
exports only ``getCreators`` and ``setLoggerFinder`` and links no TensorRT library, so it
needs TensorRT's *headers* only. They come from, in this order: a path the caller gives,
``$TENSORRT_ROOT/include``, the standard install paths, and the ``kernel-lens`` wheel of
the ``dev`` extra (TensorRT 10.14 headers; used only when their sha256 matches the pinned
2.0.1 release, and only the header files, never its Python code).

The library lands in ``$SPARSIFINER_PLUGIN_CACHE`` (default
``~/.cache/sparsifiner/plugins``), one folder per digest of the sources, the headers, the
target architectures and the nvcc version: an edit rebuilds, a repeat is free. Builds
write into a temporary folder and move the file into place, so concurrent builds and an
interrupted one leave no half-written library.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sparsifiner.errors import SparsifinerError

LIBRARY_NAME = "libsparsifiner_topk_attention_plugin.so"
KERNEL_SOURCES = ("topkMaskedAttentionKernel.cu", "topkMaskedAttentionTiledHalf.cu", "topkMaskedAttentionTiledBf16.cu")
PLUGIN_SOURCES = ("topkMaskedAttentionPlugin.cpp", "topkMaskedAttentionPluginChecks.cpp",
                  "topkMaskedAttentionPluginLibrary.cpp")
EXPORTS_MAP = "topkMaskedAttentionPlugin.map"
# sm_80 code also runs on sm_86/sm_89 (A10, L4, RTX 30/40); sm_90 is H100/H200. PTX of the
# newest listed arch is embedded too, so later GPUs (sm_100, sm_120) JIT-compile it.
DEFAULT_ARCHS = ("80", "90")
CACHE_ENV = "SPARSIFINER_PLUGIN_CACHE"
HEADER = "NvInferRuntime.h"
STANDARD_INCLUDE_DIRS = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/include",
                         "/usr/local/TensorRT/include", "/usr/local/tensorrt/include", "/opt/tensorrt/include")
# kernel-lens 2.0.1 (wheel sha256 07cc714e8b5e7f34b672f7c7fad93febe7c747be5837ba276b1527370134ffe0):
# the digest over its 11 headers (sorted "name\0sha256\n" lines), see _headers_digest.
KERNEL_LENS = "kernel_lens"
KERNEL_LENS_VERSION = "2.0.1"
KERNEL_LENS_HEADERS_SHA256 = "7f961e90e3172c0b8df7169a13c54c3f8a9822f7ee9ee8b299674f71a85afffb"


@dataclass(frozen=True)
class PluginBuildSettings:
    """What ``sparsifiner build-plugin`` builds.

    tensorrt_include: a folder holding NvInferRuntime.h, or a TensorRT root with include/
        (default: $TENSORRT_ROOT, standard paths, then the kernel-lens headers).
    archs: SM versions to compile for, e.g. ("80", "90").
    output: also copy the library there (atomically).
    force: rebuild even when the cache has the library.
    """

    tensorrt_include: Optional[str] = None
    archs: tuple = DEFAULT_ARCHS
    output: Optional[str] = None
    force: bool = False

    def __post_init__(self):
        archs = tuple(str(a).strip().lower().removeprefix("sm_").removeprefix("sm") for a in self.archs)
        if not archs or not all(re.fullmatch(r"\d{2,3}a?", a) for a in archs):
            raise SparsifinerError(f"--arch takes SM versions like 80,86,90; got {','.join(map(str, self.archs))}")
        too_old = [a for a in archs if int(a.rstrip("a")) < 80]
        if too_old:
            raise SparsifinerError(f"the kernels need sm_80 or newer (cp.async, bf16 mma); got sm_{too_old[0]}")
        object.__setattr__(self, "archs", tuple(sorted(set(archs))))


@dataclass(frozen=True)
class HeaderSource:
    """Where the TensorRT headers come from: include folder, how it was found, TensorRT version."""

    include: Path
    origin: str
    version: str


def plugin_source_dir() -> Path:
    from sparsifiner.ops.cuda_binding import plugin_source_dir as source_dir

    return source_dir()


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _headers_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.h")):
        digest.update(path.name.encode() + b"\0" + file_sha256(path).encode() + b"\n")
    return digest.hexdigest()


def tensorrt_header_version(include: Path) -> str:
    """'10.14.1' from NvInferVersion.h (TensorRT's or TensorRT-RTX's defines), else 'unknown'."""
    path = include / "NvInferVersion.h"
    if not path.is_file():
        return "unknown"
    text = path.read_text(errors="replace")
    parts = []
    for key in ("MAJOR", "MINOR", "PATCH"):
        m = (re.search(rf"#define\s+TRT_{key}_\w+\s+(\d+)", text)
             or re.search(rf"#define\s+NV_TENSORRT_{key}\s+(\d+)", text))
        parts.append(m.group(1) if m else "?")
    return ".".join(parts)


def _include_of(path: Path) -> Optional[Path]:
    for candidate in (path, path / "include"):
        if (candidate / HEADER).is_file():
            return candidate
    return None


def _kernel_lens_include() -> Optional[Path]:
    # find_spec locates the package without importing (running) it: only its headers are used.
    spec = importlib.util.find_spec(KERNEL_LENS)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "include" / "tensorrt"
    return folder if (folder / HEADER).is_file() else None


def find_tensorrt_headers(explicit: Optional[str] = None) -> HeaderSource:
    """The TensorRT headers to build against; SparsifinerError listing what was searched."""
    if explicit:
        include = _include_of(Path(explicit).expanduser())
        if include is None:
            raise SparsifinerError(f"no {HEADER} in {explicit} or {explicit}/include: pass TensorRT's include folder")
        return HeaderSource(include, "given", tensorrt_header_version(include))
    searched = []
    root = os.environ.get("TENSORRT_ROOT")
    if root:
        include = _include_of(Path(root))
        if include is not None:
            return HeaderSource(include, "TENSORRT_ROOT", tensorrt_header_version(include))
        searched.append(f"$TENSORRT_ROOT={root}")
    for folder in STANDARD_INCLUDE_DIRS:
        if (Path(folder) / HEADER).is_file():
            return HeaderSource(Path(folder), "system", tensorrt_header_version(Path(folder)))
    searched += list(STANDARD_INCLUDE_DIRS)
    lens = _kernel_lens_include()
    if lens is not None:
        if _headers_digest(lens) != KERNEL_LENS_HEADERS_SHA256:
            raise SparsifinerError(f"the kernel-lens headers in {lens} differ from the pinned {KERNEL_LENS_VERSION} "
                                   f"(sha256 mismatch): pip install 'kernel-lens=={KERNEL_LENS_VERSION}' or set TENSORRT_ROOT")
        return HeaderSource(lens, f"kernel-lens {KERNEL_LENS_VERSION}", tensorrt_header_version(lens))
    searched.append(f"the kernel-lens package (pip install 'kernel-lens=={KERNEL_LENS_VERSION}')")
    raise SparsifinerError(f"TensorRT headers ({HEADER}) not found; searched {', '.join(searched)}: "
                           "set TENSORRT_ROOT or pass --tensorrt-include")


def _nvcc(home: Path) -> tuple[Path, str]:
    nvcc = home / "bin" / "nvcc"
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True)
    m = re.search(r"release (\d+\.\d+)", out.stdout)
    return nvcc, m.group(1) if m else "unknown"


def plugin_digest(headers: HeaderSource, archs: tuple, nvcc_version: str) -> str:
    digest = hashlib.sha256()
    src = plugin_source_dir()
    for path in sorted(src.iterdir()):
        if path.suffix in {".h", ".cuh", ".cu", ".cpp", ".map"}:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(_headers_digest(headers.include).encode())
    digest.update(f"archs={','.join(archs)};nvcc={nvcc_version}".encode())
    return digest.hexdigest()[:16]


def plugin_cache_root() -> Path:
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sparsifiner" / "plugins"


def _gencode(archs: tuple) -> list:
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    newest = archs[-1]
    return flags + [f"-gencode=arch=compute_{newest},code=compute_{newest}"]


def _compile(nvcc: Path, source: Path, obj: Path, include: Path, archs: tuple) -> None:
    command = [str(nvcc), "-std=c++17", "-O3", "-c", str(source), "-o", str(obj), "-isystem", str(include),
               "-I", str(source.parent), "-Xcompiler", "-fPIC,-fvisibility=hidden", *_gencode(archs)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [l for l in (done.stderr or done.stdout).splitlines() if "error" in l] or done.stderr.splitlines()
        raise SparsifinerError(f"nvcc failed on {source.name}: {lines[0].strip() if lines else 'no output'}")


def _link(nvcc: Path, objects: list, library: Path, exports: Path) -> None:
    command = [str(nvcc), "-shared", "-o", str(library), *map(str, objects),
               "-Xlinker", f"--version-script={exports}", "-Xlinker", "--exclude-libs,ALL"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SparsifinerError(f"linking {library.name} failed: {done.stderr.strip().splitlines()[-1:]}")


def _atomic_copy(source: Path, dest: Path) -> None:
    from sparsifiner.artifacts import atomic_write

    atomic_write(dest, lambda tmp: shutil.copyfile(source, tmp))


def build_plugin(settings: PluginBuildSettings = PluginBuildSettings(), *, progress=None) -> dict:
    """Build (or find in the cache) the plugin library; returns where it is and how it was made.

    progress: optional callable(str) told about each compile step.
    """
    from sparsifiner.ops.cuda_binding import cuda_toolkit_home

    home = cuda_toolkit_home()
    if home is None:
        raise SparsifinerError("building the TensorRT plugin needs the CUDA toolkit (nvcc): install it and set CUDA_HOME")
    headers = find_tensorrt_headers(settings.tensorrt_include)
    nvcc, nvcc_version = _nvcc(home)
    digest = plugin_digest(headers, settings.archs, nvcc_version)
    folder = plugin_cache_root() / digest
    library = folder / LIBRARY_NAME
    start = time.perf_counter()
    cached = library.is_file() and not settings.force
    if not cached:
        folder.mkdir(parents=True, exist_ok=True)
        src = plugin_source_dir()
        with tempfile.TemporaryDirectory(prefix=".build-", dir=folder) as tmp:
            sources = [src / name for name in KERNEL_SOURCES + PLUGIN_SOURCES]
            objects = [Path(tmp) / (s.name + ".o") for s in sources]
            jobs = max(1, min(len(sources), os.cpu_count() or 1))
            if progress:
                progress(f"compiling {len(sources)} files for sm_{', sm_'.join(settings.archs)} ({jobs} jobs)")
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                list(pool.map(lambda so: _compile(nvcc, so[0], so[1], headers.include, settings.archs),
                              zip(sources, objects)))
            built = Path(tmp) / LIBRARY_NAME
            _link(nvcc, objects, built, src / EXPORTS_MAP)
            os.replace(built, library)
    result = {
        "path": str(library),
        "cached": cached,
        "seconds": round(time.perf_counter() - start, 2),
        "sha256": file_sha256(library),
        "archs": [f"sm_{a}" for a in settings.archs],
        "headers": {"include": str(headers.include), "origin": headers.origin, "tensorrt": headers.version},
        "nvcc": nvcc_version,
        "digest": digest,
    }
    if settings.output:
        out = Path(settings.output)
        if out.is_dir():
            out = out / LIBRARY_NAME
        _atomic_copy(library, out)
        result["output"] = str(out)
    return result


def format_plugin_build(result: dict) -> str:
    how = "found in the cache" if result["cached"] else f"built in {result['seconds']:.0f} s"
    lines = [f"{result['path']} ({how})",
             f"  {', '.join(result['archs'])}; nvcc {result['nvcc']}; TensorRT {result['headers']['tensorrt']} headers "
             f"({result['headers']['origin']}: {result['headers']['include']})",
             f"  sha256 {result['sha256']}"]
    if "output" in result:
        lines.append(f"  copied to {result['output']}")
    lines.append(f"  load it with: trtexec --dynamicPlugins={result.get('output', result['path'])}")
    return "\n".join(lines)
