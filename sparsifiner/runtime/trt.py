"""Build TensorRT engines from exported ONNX graphs (TensorRT or TensorRT-RTX).

``import_tensorrt()`` returns the real ``tensorrt`` module when installed, else
``tensorrt_rtx_bindings`` (the same Python API). ``build_engine`` is written against
that API: Builder, network, OnnxParser, BuilderConfig, an optimization profile for a
dynamic batch, ``build_serialized_network``. TensorRT-RTX builds ahead of time on a
machine without a GPU when it is given the target compute capability.

Two quirks of the TensorRT-RTX wheels:

* Precision: RTX builds strongly typed networks only, so an fp16 engine comes from an
  fp16 graph (``sparsifiner export --dtype fp16``); classic TensorRT uses the FP16 flag.
* Loader: the ONNX parser dlopen()s ``libtensorrt_rtx.so`` (to reach the plugin
  registry for nodes it does not know), but the wheel ships only
  ``libtensorrt_rtx.so.1``; when that dlopen fails the process aborts. We keep an
  unversioned symlink in a user cache folder (``ensure_rtx_library_link``) and put it
  on LD_LIBRARY_PATH for subprocesses (``loader_env``). The loader reads that variable
  at process start only, so in-process builds instead refuse graphs with nodes that
  need a plugin before parsing, and ``build_engine_isolated`` runs a build in a child
  process, turning a crash into a SparsifinerError.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Union

from sparsifiner.errors import SparsifinerError

RTX_MODULE = "tensorrt_rtx_bindings"
RTX_LIBS_MODULE = "tensorrt_rtx_libs"
RTX_LIBRARY = "libtensorrt_rtx.so"
# ONNX domains TensorRT's parser imports natively; any other node needs a plugin.
_NATIVE_DOMAINS = ("", "ai.onnx")


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


def plugin_nodes(onnx_model) -> list[str]:
    """'domain::op_type' of nodes TensorRT cannot import natively (no local function)."""
    local = {(f.domain, f.name) for f in onnx_model.functions}
    found = []
    for node in onnx_model.graph.node:
        if node.domain not in _NATIVE_DOMAINS and (node.domain, node.op_type) not in local:
            name = f"{node.domain}::{node.op_type}"
            if name not in found:
                found.append(name)
    return found


def _make_logger(trt):
    class _Logger(trt.ILogger):
        """Keeps error messages for the exception; prints nothing below errors."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list = []

        def log(self, severity, msg):
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(str(msg))

    return _Logger()


def _gpu_visible() -> bool:
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except OSError:
        return False


def _set_compute_capability(trt, config, compute_capability: Optional[str]) -> None:
    if not hasattr(trt, "ComputeCapability"):
        if compute_capability not in (None, "current"):
            raise SparsifinerError("compute_capability is a TensorRT-RTX option; classic TensorRT targets the local GPU")
        return
    if compute_capability is None:
        if not _gpu_visible():
            raise SparsifinerError("no GPU is visible: pass compute_capability (e.g. 'sm86') to build ahead of time")
        compute_capability = "current"
    name = compute_capability.upper()
    if name not in trt.ComputeCapability.__members__:
        options = ", ".join(m.lower() for m in trt.ComputeCapability.__members__ if m != "NONE")
        raise SparsifinerError(f"unknown compute capability {compute_capability!r}: use one of {options}")
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.__members__[name], 0)


def _registered_plugins(trt) -> set:
    try:
        return {creator.name for creator in trt.get_plugin_registry().all_creators}
    except Exception:  # bindings differ across versions; no registry means no plugins
        return set()


def build_engine(onnx_path: Union[str, Path], *, fp16: bool = False, max_batch: int = 8,
                 opt_batch: Optional[int] = None, compute_capability: Optional[str] = None,
                 workspace_mib: Optional[int] = None, check_plugins: bool = True) -> bytes:
    """Parse an ONNX file and build a serialized engine (in this process).

    fp16: build an fp16 engine (classic TensorRT: the FP16 flag; TensorRT-RTX: the graph
    must be an fp16 export). A dynamic batch gets one profile [1, opt_batch, max_batch].
    compute_capability: TensorRT-RTX target such as "sm86" ("current" needs a GPU).
    check_plugins: refuse, before parsing, nodes that need a plugin nobody registered
    (the parser's plugin fallback is where the RTX loader quirk aborts); only an
    isolated build with the loader fix should turn it off.
    """
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise SparsifinerError(f"ONNX file not found: {path}")
    model = onnx.load(str(path), load_external_data=False)
    trt = import_tensorrt()
    registered = _registered_plugins(trt)
    needs_plugin = [name for name in plugin_nodes(model) if name.split("::")[-1] not in registered]
    if needs_plugin and check_plugins:
        raise SparsifinerError(
            f"{path} has nodes without a TensorRT importer or local function ({', '.join(needs_plugin)}): "
            "export with --attention decomposed, or keep the op's local function"
        )
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if not is_rtx(trt) and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") \
            and int(trt.__version__.split(".")[0]) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        raise SparsifinerError(f"TensorRT cannot parse {path.name}: {errors[0] if errors else 'unknown error'}")

    config = builder.create_builder_config()
    _set_compute_capability(trt, config, compute_capability)
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if fp16:
        if hasattr(trt.BuilderFlag, "FP16") and not is_rtx(trt):
            config.set_flag(trt.BuilderFlag.FP16)
        elif any(t.dtype != trt.float16 for t in inputs):
            raise SparsifinerError("TensorRT-RTX builds strongly typed networks: export the graph with --dtype fp16")
    elif is_rtx(trt) and any(t.dtype == trt.float16 for t in inputs):
        raise SparsifinerError("the graph is fp16: pass fp16=True (TensorRT-RTX keeps the graph's precision)")

    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            shape = list(tensor.shape)
            if any(d < 0 for d in shape[1:]):
                raise SparsifinerError(f"input {tensor.name} {shape}: only the batch dimension may be dynamic")
            opt = opt_batch or max(1, max_batch // 2)
            profile.set_shape(tensor.name, [1, *shape[1:]], [opt, *shape[1:]], [max_batch, *shape[1:]])
        config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        detail = logger.errors[-1] if logger.errors else "no details"
        raise SparsifinerError(f"TensorRT could not build an engine from {path.name}: {detail}")
    return bytes(engine)


def build_engine_isolated(onnx_path: Union[str, Path], *, timeout: float = 600, **options) -> bytes:
    """build_engine in a child process (with the loader fix); a crash becomes an error."""
    with tempfile.TemporaryDirectory(prefix="sparsifiner-trt-") as tmp:
        engine_path = Path(tmp) / "model.engine"
        cmd = [sys.executable, "-m", "sparsifiner.runtime.trt", str(onnx_path), str(engine_path)]
        for key, value in options.items():
            if key == "check_plugins":
                if not value:
                    cmd.append("--no-check-plugins")
            elif value is True:
                cmd.append(f"--{key.replace('_', '-')}")
            elif value not in (None, False):
                cmd += [f"--{key.replace('_', '-')}", str(value)]
        try:
            done = subprocess.run(cmd, env=loader_env(), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise SparsifinerError(f"the TensorRT build of {Path(onnx_path).name} took over {timeout:.0f} s") from exc
        if done.returncode != 0:
            lines = [l for l in done.stderr.strip().splitlines() if l.strip()]
            why = lines[-1] if lines else "no output"
            if done.returncode < 0:
                why = f"the builder process crashed (signal {-done.returncode}): {why}"
            raise SparsifinerError(why[len("error: "):] if why.startswith("error: ") else why)
        return engine_path.read_bytes()


def _main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sparsifiner.runtime.trt", description="Build a TensorRT engine.")
    parser.add_argument("onnx")
    parser.add_argument("engine")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--opt-batch", type=int, default=None)
    parser.add_argument("--compute-capability", default=None)
    parser.add_argument("--workspace-mib", type=int, default=None)
    parser.add_argument("--no-check-plugins", dest="check_plugins", action="store_false")
    args = parser.parse_args(argv)
    try:
        engine = build_engine(args.onnx, fp16=args.fp16, max_batch=args.max_batch, opt_batch=args.opt_batch,
                              compute_capability=args.compute_capability, workspace_mib=args.workspace_mib,
                              check_plugins=args.check_plugins)
    except SparsifinerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.engine).write_bytes(engine)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
