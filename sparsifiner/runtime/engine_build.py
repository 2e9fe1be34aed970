"""Build TensorRT engines from exported ONNX graphs (TensorRT or TensorRT-RTX).

``build_engine`` is written against the ``tensorrt`` API (``sparsifiner.runtime.trt_loader``
picks TensorRT or TensorRT-RTX): Builder, network, OnnxParser, BuilderConfig, an
optimization profile for a dynamic batch, ``build_serialized_network``. TensorRT-RTX
builds ahead of time on a machine without a GPU when it is given the target compute
capability.

* Precision: RTX builds strongly typed networks only, so an fp16 engine comes from an
  fp16 graph (``sparsifiner export --dtype fp16``); classic TensorRT uses the FP16 flag.
* Plugins: because of the RTX loader quirk (see trt_loader), in-process builds refuse
  graphs with nodes that need a plugin before parsing, and ``build_engine_isolated``
  runs a build in a child process with the loader fix, turning a crash into a
  SparsifinerError.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Union

from sparsifiner.errors import SparsifinerError
from sparsifiner.runtime.trt_loader import (gpu_visible, import_tensorrt, is_rtx, loader_env, make_logger,
                                             registered_plugins)

# ONNX domains TensorRT's parser imports natively; any other node needs a plugin.
_NATIVE_DOMAINS = ("", "ai.onnx")


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


def _set_compute_capability(trt, config, compute_capability: Optional[str]) -> None:
    if not hasattr(trt, "ComputeCapability"):
        if compute_capability not in (None, "current"):
            raise SparsifinerError("compute_capability is a TensorRT-RTX option; classic TensorRT targets the local GPU")
        return
    if compute_capability is None:
        if not gpu_visible():
            raise SparsifinerError("no GPU is visible: pass compute_capability (e.g. 'sm86') to build ahead of time")
        compute_capability = "current"
    name = compute_capability.upper()
    if name not in trt.ComputeCapability.__members__:
        options = ", ".join(m.lower() for m in trt.ComputeCapability.__members__ if m != "NONE")
        raise SparsifinerError(f"unknown compute capability {compute_capability!r}: use one of {options}")
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.__members__[name], 0)


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
    registered = registered_plugins(trt)
    needs_plugin = [name for name in plugin_nodes(model) if name.split("::")[-1] not in registered]
    if needs_plugin and check_plugins:
        raise SparsifinerError(
            f"{path} has nodes without a TensorRT importer or local function ({', '.join(needs_plugin)}): "
            "export with --attention decomposed, or keep the op's local function"
        )
    logger = make_logger(trt)
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
        cmd = [sys.executable, "-m", "sparsifiner.runtime.engine_build", str(onnx_path), str(engine_path)]
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

    parser = argparse.ArgumentParser(prog="python -m sparsifiner.runtime.engine_build", description="Build a TensorRT engine.")
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
