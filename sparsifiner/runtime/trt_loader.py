"""Load TensorRT or TensorRT-RTX (the same Python API) and the pieces every engine tool needs.

``import_tensorrt()`` returns the real ``tensorrt`` module when installed, else
``tensorrt_rtx_bindings``; ``import_backend("auto"|"trt"|"rtx")`` picks one explicitly.
``load_plugin_library`` registers a plugin library and finds a creator by name, version
and namespace, with a diagnostic naming all three and the library searched. Loader quirk of the TensorRT-RTX wheels: the ONNX parser
dlopen()s ``libtensorrt_rtx.so`` (to reach the plugin registry for nodes it does not
know), but the wheel ships only ``libtensorrt_rtx.so.1``; when that dlopen fails the
process aborts. We keep an unversioned symlink in a user cache folder
(``ensure_rtx_library_link``) and put it on LD_LIBRARY_PATH for subprocesses
(``loader_env``); the loader reads that variable at process start only.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Optional

from sparsifiner.errors import SparsifinerError

RTX_MODULE = "tensorrt_rtx_bindings"
RTX_LIBS_MODULE = "tensorrt_rtx_libs"
RTX_LIBRARY = "libtensorrt_rtx.so"


def import_tensorrt():
    """The ``tensorrt`` module, else ``tensorrt_rtx_bindings``; SparsifinerError if neither."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        pass
    ensure_rtx_library_link()
    try:
        return importlib.import_module(RTX_MODULE)
    except ImportError as exc:
        raise SparsifinerError("TensorRT is not installed: pip install 'sparsifiner[rtx]' (TensorRT-RTX) "
                               "or 'sparsifiner[trt]'") from exc


BACKENDS = {"trt": "tensorrt", "rtx": RTX_MODULE}


def import_backend(backend: str = "auto"):
    """The module of a backend: "trt" (TensorRT), "rtx" (TensorRT-RTX) or "auto" (TensorRT if installed)."""
    if backend == "auto":
        return import_tensorrt()
    if backend not in BACKENDS:
        raise SparsifinerError(f"--backend must be auto, trt or rtx; got {backend!r}")
    if backend == "rtx":
        ensure_rtx_library_link()
    try:
        return importlib.import_module(BACKENDS[backend])
    except ImportError as exc:
        extra = "rtx" if backend == "rtx" else "trt"
        raise SparsifinerError(f"--backend {backend}: {BACKENDS[backend]} is not installed "
                               f"(pip install 'sparsifiner[{extra}]')") from exc


def backend_name(trt) -> str:
    """"tensorrt_rtx" or "tensorrt": the name engines and sidecars record."""
    return "tensorrt_rtx" if is_rtx(trt) else "tensorrt"


def load_plugin_library(trt, path, name: str, version: str, namespace: str):
    """Load a plugin library into the registry and return the creator (name, version, namespace)."""
    path = Path(path)
    if not path.is_file():
        raise SparsifinerError(f"plugin library not found: {path}")
    registry = trt.get_plugin_registry()
    creator = registry.get_creator(name, version, namespace)
    if creator is None:
        try:
            registry.load_library(str(path))
        except Exception as exc:  # noqa: BLE001 - the bindings raise plain RuntimeError/TypeError
            raise SparsifinerError(f"TensorRT cannot load the plugin library {path}: {exc}") from exc
        creator = registry.get_creator(name, version, namespace)
    if creator is None:
        found = sorted(f"{c.name} v{c.plugin_version} ({c.plugin_namespace or 'no namespace'})"
                       for c in registry.all_creators if getattr(c, "name", "") == name)
        raise SparsifinerError(f"plugin not found: {name} version {version} namespace '{namespace}' in {path}"
                               + (f" (it has {', '.join(found)})" if found else ""))
    return creator


def tensorrt_available() -> bool:
    return any(importlib.util.find_spec(name) is not None for name in ("tensorrt", RTX_MODULE))


def is_rtx(trt) -> bool:
    return trt.__name__.split(".")[0].startswith("tensorrt_rtx")


def rtx_library_dir() -> Optional[Path]:
    spec = importlib.util.find_spec(RTX_LIBS_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sparsifiner" / "tensorrt_rtx"


def ensure_rtx_library_link() -> Optional[Path]:
    """A folder where ``libtensorrt_rtx.so`` resolves to the wheel's ``.so.1``; None without RTX.

    The wheel's own folder when it has the unversioned name already, else a per-wheel
    folder in the user cache holding the symlink (created atomically, once).
    """
    libdir = rtx_library_dir()
    if libdir is None:
        return None
    if (libdir / RTX_LIBRARY).exists():
        return libdir
    target = libdir / f"{RTX_LIBRARY}.1"
    if not target.exists():
        return None
    folder = _cache_root() / hashlib.sha1(str(target.resolve()).encode()).hexdigest()[:12]
    link = folder / RTX_LIBRARY
    if link.is_symlink() and link.resolve() == target.resolve():
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{RTX_LIBRARY}.{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError:
        return None  # a read-only home: builds still work for graphs that need no plugin
    return folder


def loader_env(env: Optional[dict] = None) -> dict:
    """A copy of ``env`` (default os.environ) whose LD_LIBRARY_PATH finds libtensorrt_rtx.so."""
    env = dict(os.environ if env is None else env)
    folder = ensure_rtx_library_link()
    if folder is not None:
        parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        if str(folder) not in parts:
            env["LD_LIBRARY_PATH"] = os.pathsep.join([str(folder), *parts])
    return env


def make_logger(trt):
    class _Logger(trt.ILogger):
        """Keeps error messages for the exception (and every message, for build logs); prints nothing."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list = []
            self.messages: list = []

        def log(self, severity, msg):
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(str(msg))
            self.messages.append(str(msg))

    return _Logger()


def gpu_visible() -> bool:
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except OSError:
        return False


def registered_plugins(trt) -> set:
    try:
        return {creator.name for creator in trt.get_plugin_registry().all_creators}
    except Exception:  # bindings differ across versions; no registry means no plugins
        return set()
