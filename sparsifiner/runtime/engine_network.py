"""The TensorRT side of an engine build: plugin, parse, profile, builder config, build, layers.

``build_serialized_engine(settings, plugin_library, events)`` runs in the build's child
process (``sparsifiner.runtime.engine_build`` starts it with the TensorRT-RTX loader fix)
and is written against the ``tensorrt`` Python API, which TensorRT-RTX shares:

* The network is strongly typed: every tensor keeps the precision of the ONNX graph
  (an fp16 or bf16 export gives an fp16 or bf16 engine). TF32 is off for fp32 graphs
  unless asked for, so an fp32 engine computes what the fp32 graph says.
* Custom TopKMaskedAttention nodes become PLUGIN_V3 layers. They must carry
  ``plugin_namespace``/``plugin_version`` (without them TensorRT-RTX inlines the node's
  local function even with the plugin loaded); graphs exported before that are tagged
  in memory. With ``use_plugin=False`` the attributes are removed and the local function
  is what gets built. Either way the result is checked layer by layer.
* The layer list comes from the build log (TensorRT-RTX prints the engine's layers at
  detailed profiling verbosity) or, where an engine can be deserialized (a GPU), from the
  engine inspector.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable, Optional

from sparsifiner import op_spec
from sparsifiner.errors import SparsifinerError
from sparsifiner.runtime.trt_loader import backend_name, gpu_visible, import_backend, load_plugin_library, make_logger

# ONNX domains TensorRT's parser imports natively; any other node needs a plugin or a local function.
NATIVE_DOMAINS = ("", "ai.onnx")
RTX_NO_SM90 = ("TensorRT-RTX cannot build for {cc} (H100/H200 are sm90; it targets {targets}): "
               "build on that GPU with TensorRT (--backend trt)")


def custom_nodes(model) -> list:
    """The TopKMaskedAttention nodes the plugin implements. Version-2 graphs (tile-shared
    selection) have none: no plugin implements version 2 yet, so their nodes are built from
    their local function and are never tagged for the version-1 plugin."""
    version = {imp.domain: imp.version for imp in model.opset_import}.get(op_spec.OP_DOMAIN, op_spec.OP_VERSION)
    if version != op_spec.OP_VERSION:
        return []
    return [n for n in model.graph.node if n.domain == op_spec.OP_DOMAIN and n.op_type == op_spec.OP_NAME]


def unsupported_nodes(model, plugin_ops: tuple = ()) -> list[str]:
    """'domain::op_type' of nodes with no importer, no local function and no plugin we provide."""
    local = {(f.domain, f.name) for f in model.functions}
    found = []
    for node in model.graph.node:
        key = (node.domain, node.op_type)
        if node.domain not in NATIVE_DOMAINS and key not in local and key not in plugin_ops:
            name = f"{node.domain}::{node.op_type}"
            if name not in found:
                found.append(name)
    return found


def check_nodes(model, name: str, use_plugin: bool) -> None:
    """Refuse a graph with a node nothing can build (no importer, local function or plugin)."""
    ours = ((op_spec.OP_DOMAIN, op_spec.OP_NAME),) if use_plugin else ()
    unsupported = unsupported_nodes(model, ours)
    if unsupported:
        raise SparsifinerError(f"unsupported node {unsupported[0]} in {name}: TensorRT has no importer for it, "
                               "the graph carries no local function and no plugin provides it")


def set_plugin_attributes(nodes, use_plugin: bool) -> int:
    """Tag (or untag) custom nodes for TensorRT's plugin lookup; returns how many changed."""
    import onnx

    changed = 0
    for node in nodes:
        attrs = {a.name: a for a in node.attribute}
        present = all(name in attrs for name in op_spec.PLUGIN_NODE_ATTRIBUTES)
        if present == use_plugin:
            continue
        kept = [a for a in node.attribute if a.name not in op_spec.PLUGIN_NODE_ATTRIBUTES]
        del node.attribute[:]
        node.attribute.extend(kept)
        if use_plugin:
            node.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in op_spec.PLUGIN_NODE_ATTRIBUTES.items())
        changed += 1
    return changed


def node_plugin_id(node) -> tuple[str, str]:
    attrs = {a.name: a.s.decode() for a in node.attribute if a.name in op_spec.PLUGIN_NODE_ATTRIBUTES}
    return (attrs.get(op_spec.ATTR_PLUGIN_VERSION, "1"), attrs.get(op_spec.ATTR_PLUGIN_NAMESPACE, ""))


def resolve_target(trt, compute_capability: Optional[str]) -> str:
    """The build target ("current" or a TensorRT-RTX sm name); refuses what the backend cannot build here."""
    if not hasattr(trt, "ComputeCapability"):
        if compute_capability not in (None, "current"):
            raise SparsifinerError("--compute-capability is a TensorRT-RTX option: TensorRT builds for the local GPU")
        if not gpu_visible():
            raise SparsifinerError("TensorRT builds engines on the GPU they run on and none is visible: "
                                   "use --backend rtx --compute-capability sm86 (or another) for an ahead-of-time build")
        return "current"
    members = trt.ComputeCapability.__members__
    targets = ", ".join(m.lower() for m in members if m not in ("NONE", "CURRENT"))
    name = (compute_capability or "current").lower().replace("_", "")
    if name in ("sm90", "sm90a"):
        raise SparsifinerError(RTX_NO_SM90.format(cc=name, targets=targets))
    if name.upper() not in members or name == "none":
        raise SparsifinerError(f"unknown compute capability {compute_capability!r}: TensorRT-RTX builds for {targets}")
    if name == "current" and not gpu_visible():
        raise SparsifinerError(f"no GPU is visible: pass --compute-capability ({targets}) to build ahead of time")
    return name


def set_target(trt, config, compute_capability: Optional[str]) -> str:
    name = resolve_target(trt, compute_capability)
    if hasattr(trt, "ComputeCapability"):
        config.num_compute_capabilities = 1
        config.set_compute_capability(trt.ComputeCapability.__members__[name.upper()], 0)
    return name


def _dtype_name(trt, dtype) -> str:
    names = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
             "INT8": "int8", "BOOL": "bool", "UINT8": "uint8", "FP8": "fp8"}
    return names.get(str(dtype).split(".")[-1], str(dtype).split(".")[-1].lower())


def _profile(trt, builder, config, network, settings) -> Optional[dict]:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    given = (settings.min_batch, settings.opt_batch, settings.max_batch)
    if not dynamic:
        if any(v is not None for v in given):
            raise SparsifinerError("the graph has a fixed batch: --min/--opt/--max apply to dynamic-batch exports")
        return None
    low, opt, high = settings.batch_range()
    profile = builder.create_optimization_profile()
    for tensor in dynamic:
        shape = list(tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise SparsifinerError(f"input {tensor.name} {shape}: only the batch dimension may be dynamic")
        profile.set_shape(tensor.name, [low, *shape[1:]], [opt, *shape[1:]], [high, *shape[1:]])
    config.add_optimization_profile(profile)
    return {"min": low, "opt": opt, "max": high}


def _progress_monitor(trt, events: Callable):
    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            events("start", phase=phase_name, parent=parent_phase, steps=num_steps)

        def step_complete(self, phase_name, step):
            events("step", phase=phase_name, step=step)
            return True

        def phase_finish(self, phase_name):
            events("finish", phase=phase_name)

    return Monitor()


def _log_layers(messages: list) -> Optional[list]:
    """[{"name", "type"}] from the "Layers:" block of a detailed build log (TensorRT-RTX)."""
    starts = [i for i, m in enumerate(messages) if m.startswith("Layers:")]
    if not starts:
        return None
    text = "\n".join(messages[starts[-1]:starts[-1] + 3])
    return [{"name": n, "type": t} for n, t in re.findall(r"Name: ([^,\n]+), LayerType: ([^,\n]+)", text)]


def _inspector_layers(trt, logger, engine_bytes: bytes) -> Optional[list]:
    """Engine layers through the inspector; needs a GPU (deserialisation)."""
    if not gpu_visible():
        return None
    try:
        engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
        info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception:  # noqa: BLE001 - a layer list is a report, not a reason to fail the build
        return None
    return [{"name": l if isinstance(l, str) else l.get("Name"), "type": None if isinstance(l, str) else l.get("LayerType")}
            for l in info.get("Layers", [])]


def _first_error(messages: list) -> Optional[str]:
    """The plugin's own message when it has one (it names the layer and the reason), else the first."""
    ours = [m for m in messages if m.startswith(f"{op_spec.OP_NAME} '")]
    return (ours or messages or [None])[0]


def build_serialized_engine(settings, plugin_library: Optional[str], events: Callable = lambda *a, **k: None
                            ) -> tuple[bytes, dict]:
    """Parse settings.onnx_path and build; returns (engine bytes, build info for the sidecar)."""
    import onnx

    start = time.perf_counter()
    trt = import_backend(settings.backend)
    path = Path(settings.onnx_path)
    model = onnx.load(str(path))
    nodes = custom_nodes(model)
    retagged = set_plugin_attributes(nodes, settings.use_plugin) if nodes else 0
    plugin = None
    if nodes and settings.use_plugin:
        if plugin_library is None:
            raise SparsifinerError(f"{path.name} has {len(nodes)} {op_spec.OP_NAME} nodes and no plugin library was given")
        events("note", text=f"loading plugin {plugin_library}")
        for version, namespace in sorted({node_plugin_id(n) for n in nodes}):
            load_plugin_library(trt, plugin_library, op_spec.OP_NAME, version, namespace)
        plugin = {"library": str(plugin_library), "name": op_spec.OP_NAME, "version": op_spec.PLUGIN_VERSION,
                  "namespace": op_spec.PLUGIN_NAMESPACE}
    check_nodes(model, path.name, settings.use_plugin)

    logger = make_logger(trt)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    events("note", text=f"parsing {path.name}")
    if not parser.parse(model.SerializeToString(), str(path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise SparsifinerError(f"TensorRT cannot parse {path.name}: {_first_error(logger.errors) or errors[0]}")
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    plugin_layers = [l.name for l in layers if l.type == trt.LayerType.PLUGIN_V3]
    if nodes and settings.use_plugin:
        missing = [n.name for n in nodes if n.name not in plugin_layers]
        if missing or len(plugin_layers) != len(nodes):
            raise SparsifinerError(f"{len(missing)} of {len(nodes)} {op_spec.OP_NAME} nodes did not become plugin "
                                   f"layers (first: {missing[:1]}): TensorRT used their local function instead")

    config = builder.create_builder_config()
    target = set_target(trt, config, settings.compute_capability)
    if settings.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    if settings.optimization_level is not None:
        config.builder_optimization_level = settings.optimization_level
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    float32 = all(t.dtype == trt.float32 for t in inputs)
    if float32 and not settings.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if settings.progress and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt, events)
    profile = _profile(trt, builder, config, network, settings)
    cache = None
    if settings.timing_cache:
        cache_path = Path(settings.timing_cache)
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        if cache is None or not config.set_timing_cache(cache, False):
            raise SparsifinerError(f"{cache_path} is not a timing cache of this TensorRT version: delete it to start anew")
    events("note", text="building")
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise SparsifinerError(f"TensorRT could not build an engine from {path.name}: "
                               f"{_first_error(logger.errors) or 'no details in the log'}")
    engine_bytes = bytes(engine)
    info = {
        "backend": {"name": backend_name(trt), "version": trt.__version__},
        "target": target,
        "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": _dtype_name(trt, t.dtype)} for t in inputs],
        "outputs": [{"name": network.get_output(i).name, "shape": list(network.get_output(i).shape),
                     "dtype": _dtype_name(trt, network.get_output(i).dtype)} for i in range(network.num_outputs)],
        "profile": profile,
        "plugin": plugin,
        "custom_nodes": len(nodes),
        "retagged_nodes": retagged,
        "layers": {"plugin": plugin_layers, "network": len(layers),
                   "engine": _log_layers(logger.messages) or _inspector_layers(trt, logger, engine_bytes)},
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    if cache is not None:
        from sparsifiner.artifacts import atomic_write

        data = bytes(config.get_timing_cache().serialize())
        atomic_write(Path(settings.timing_cache), lambda tmp: Path(tmp).write_bytes(data))
        info["timing_cache"] = str(settings.timing_cache)
    return engine_bytes, info
