"""Export a Sparsifiner (or its dense teacher) to ONNX with torch's current exporter.

``export_onnx(settings, path)`` runs ``torch.onnx.export(..., dynamo=True)`` with a
``custom_translation_table`` that turns ``sparsifiner::topk_masked_attention`` into
one TopKMaskedAttention node per block, then post-processes the ModelProto:

* custom: adds the op's model-local function (standard-op body) so any ONNX runtime
  can run the file; a runtime with a kernel (or TensorRT plugin) uses that instead. Each
  node gets the string attributes ``plugin_namespace`` and ``plugin_version``: without
  them TensorRT-RTX silently inlines the local function even when the plugin is loaded.
  Models with tile-shared selection export version-2 nodes (``op_spec.TILE_ATTRIBUTES``)
  and the version-2 function; no plugin implements version 2 yet, so those nodes carry
  no plugin attributes and TensorRT builds them from the local function.
* decomposed: the same, then inlines the function everywhere: standard ops only.
* dense: nothing to add (timm's attention exports as MatMul/Softmax).

Quirks handled here: torch's exporter inlines every model-local function while it
converts opsets, so the function is added after export, written for the model's
opset; node metadata carrying source paths is dropped; basis initializers and
attention nodes are named after their block. The file is written atomically, with
its export settings as JSON beside it (``model.onnx.json``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Union

from sparsifiner import op_spec
from sparsifiner.errors import SparsifinerError
from sparsifiner.artifacts import INPUT_NAME, OUTPUT_NAME, atomic_write, build_metadata, sidecar_path, write_json
from sparsifiner.export.settings import ExportSettings

# Node metadata kept in the file; the rest (stack traces with local paths, FX dumps)
# is exporter debugging output.
_KEEP_NODE_METADATA = ("namespace",)
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"
# torch.export needs a dynamic dimension's range; the upper bound is only a hint.
_MAX_DYNAMIC_BATCH = 4096


def export_onnx(settings: ExportSettings, path: Union[str, Path]) -> dict:
    """Write the ONNX file settings describe to ``path``; returns a summary dict."""
    import onnx
    import torch

    from sparsifiner.data.folder import data_config_dict
    from sparsifiner.export import onnx_op
    from sparsifiner.model import budget_of, settings_of
    from sparsifiner.model.source import load_model
    from sparsifiner.model.sparsify import arch_of

    path = Path(path)
    _check_destination(path)
    start = time.perf_counter()
    model, sparse, trained = load_model(settings.source, settings.attention)
    if settings.dtype == "fp16":
        model = model.half()
    preprocess = data_config_dict(model)
    channels, height, width = preprocess["input_size"]
    example_batch = 2 if settings.dynamic_batch else settings.batch
    dtype = torch.float16 if settings.dtype == "fp16" else torch.float32
    example = torch.randn(example_batch, channels, height, width).to(dtype)
    dynamic_shapes = None
    if settings.dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim(settings.batch, min=1, max=_MAX_DYNAMIC_BATCH)},)

    onnx_op.register_schema()
    import sparsifiner.ops.tile_op  # noqa: F401  (registers the version-2 op)

    table = {torch.ops.sparsifiner.topk_masked_attention.default: onnx_op.torch_translation,
             torch.ops.sparsifiner.topk_masked_attention_v2.default: onnx_op.torch_translation_v2}
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=settings.opset, custom_translation_table=table,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes,
                optimize=True, verify=False, verbose=False,
            )
    except SparsifinerError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SparsifinerError(f"torch.onnx.export failed ({type(exc).__name__}: {first}); "
                               "run with --attention dense to check the backbone exports") from exc
    proto = program.model_proto
    got = {imp.domain: imp.version for imp in proto.opset_import}.get("", None)
    if got != settings.opset:
        raise SparsifinerError(f"the exporter could not convert the graph to opset {settings.opset} (it is at {got}): "
                               f"use --opset {got}")

    if settings.dynamic_batch:
        _name_batch_dim(proto.graph, settings.batch)
    _clean_node_metadata(proto.graph)
    custom_nodes = _name_attention_nodes(proto.graph)
    op_inputs = op_input_names(custom_nodes) if settings.attention != "dense" else None
    op_version = {imp.domain: imp.version for imp in proto.opset_import}.get(op_spec.OP_DOMAIN, op_spec.OP_VERSION)
    if settings.attention in ("custom", "decomposed"):
        if not custom_nodes:
            raise AssertionError("no TopKMaskedAttention node was exported")
        proto.functions.append(onnx_op.function_proto(settings.opset, op_version))
        if op_version == op_spec.OP_VERSION:
            _tag_plugin_nodes(custom_nodes)
    if settings.attention == "decomposed":
        proto = _inline_op_function(proto)

    sparse_settings = settings_of(sparse)
    source = settings.source.to_dict()
    if source["checkpoint"] is not None:
        source["checkpoint"] = str(Path(source["checkpoint"]).resolve())
    meta = build_metadata(
        attention=settings.attention, dtype=settings.dtype, opset=settings.opset, batch=settings.batch,
        budget=budget_of(sparse), settings=sparse_settings.to_dict(), arch=arch_of(sparse),
        source=source, trained=trained, data_config=preprocess, op_inputs=op_inputs, op_version=op_version,
    )
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "sparsifiner"
    proto.doc_string = f"Sparsifiner {settings.attention} export of {arch_of(sparse)['model']}"

    onnx.checker.check_model(proto, full_check=True)
    try:
        atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))
    except OSError as exc:  # disk full, permissions changed mid-export, ...
        raise SparsifinerError(f"cannot write {path}: {exc.strerror or exc}; nothing was written") from exc
    summary = {
        "path": str(path),
        "attention": settings.attention,
        "opset": settings.opset,
        "dtype": settings.dtype,
        "batch": settings.batch,
        "model": arch_of(sparse)["model"],
        "source": settings.source.kind,
        "trained": trained,
        "budget": budget_of(sparse),
        "keep_rate": sparse_settings.keep_rate,
        "input": [INPUT_NAME, [settings.batch, channels, height, width], settings.dtype],
        "output": OUTPUT_NAME,
        "nodes": len(proto.graph.node),
        "custom_nodes": sum(n.domain == op_spec.OP_DOMAIN for n in proto.graph.node),
        "op_version": op_version if settings.attention != "dense" else None,
        "selection": sparse_settings.selection,
        "bytes": path.stat().st_size,
        "seconds": round(time.perf_counter() - start, 2),
    }
    # The export's settings beside the artifact (model.onnx -> model.onnx.json; not model.json,
    # which is the description of a checkpoint model.safetensors in the same folder).
    sidecar = {"export_settings": settings.to_dict(), "summary": summary}
    try:
        write_json(sidecar_path(path), sidecar)
    except OSError as exc:
        raise SparsifinerError(f"wrote {path} but not its settings file: {exc.strerror or exc}") from exc
    return summary


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress and opset-conversion chatter (errors still raise)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _check_destination(path: Path) -> None:
    """Fail before the (slow) export when the file could not be written."""
    import os

    if path.suffix != ".onnx":
        raise SparsifinerError(f"--onnx must name a .onnx file, got {path}")
    if path.is_dir():
        raise SparsifinerError(f"{path} is a folder: pass a file name ending in .onnx")
    if not path.parent.is_dir():
        raise SparsifinerError(f"output folder {path.parent} does not exist: create it first")
    if not os.access(path.parent, os.W_OK):
        raise SparsifinerError(f"cannot write to {path.parent}: choose a writable output folder")


def _name_batch_dim(graph, name: str) -> None:
    """Give the dynamic batch dimension its requested name everywhere.

    Recent exporters name it after the torch.export Dim already; older ones (torch 2.6)
    write a symbol such as "s0".
    """
    old = graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if not old or old == name:
        return
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = name


def _clean_node_metadata(graph) -> None:
    for node in graph.node:
        keep = [(p.key, p.value) for p in node.metadata_props if p.key in _KEEP_NODE_METADATA or p.key == _NAME_SCOPES]
        del node.metadata_props[:]
        for key, value in keep:
            node.metadata_props.add(key=key, value=value)
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        del value.metadata_props[:]
    for init in graph.initializer:
        del init.metadata_props[:]


def _name_attention_nodes(graph) -> list:
    """Name each TopKMaskedAttention node and its basis initializer after its block.

    ``blocks.3.attn.topk_masked_attention`` reads better in profiles and plugin logs
    than ``node_topk_masked_attention_3``; the basis becomes
    ``blocks.3.attn.predictor.pruned_basis`` (the state-dict name).
    """
    nodes = [n for n in graph.node if n.domain == op_spec.OP_DOMAIN and n.op_type == op_spec.OP_NAME]
    inits = {init.name: init for init in graph.initializer}
    uses: dict = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    taken = set(inits) | {n.name for n in graph.node}
    for node in nodes:
        scope = _block_scope(node)
        if scope is None:
            continue
        node_name = f"{scope}.{op_spec.TORCH_OP_NAME}"
        if node_name not in taken:
            node.name = node_name
            taken.add(node_name)
        basis = node.input[op_spec.INPUT_NAMES.index("basis")]
        new = f"{scope}.predictor.pruned_basis"
        if basis in inits and uses.get(basis) == 1 and new not in taken:
            inits[basis].name = new
            node.input[op_spec.INPUT_NAMES.index("basis")] = new
            taken.add(new)
        coef = node.input[op_spec.INPUT_NAMES.index("coef")]
        new = f"{scope}.predictor.coef"
        if coef not in inits and new not in taken:
            _rename_value(graph, coef, new)
            taken.add(new)
    for node in graph.node:
        for i, prop in enumerate(node.metadata_props):
            if prop.key == _NAME_SCOPES:
                del node.metadata_props[i]
                break
    return nodes


def _tag_plugin_nodes(nodes) -> None:
    """Write op_spec.PLUGIN_NODE_ATTRIBUTES on every TopKMaskedAttention node (TensorRT's plugin lookup)."""
    import onnx

    for node in nodes:
        kept = [a for a in node.attribute if a.name not in op_spec.PLUGIN_NODE_ATTRIBUTES]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.extend(onnx.helper.make_attribute(name, value)
                              for name, value in op_spec.PLUGIN_NODE_ATTRIBUTES.items())


def _rename_value(graph, old: str, new: str) -> None:
    """Rename a tensor everywhere it appears in the graph (producer, consumers, value_info, outputs)."""
    for node in graph.node:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name == old:
                    field[i] = new
    for value in list(graph.value_info) + list(graph.output):
        if value.name == old:
            value.name = new


def op_input_names(nodes) -> dict:
    """{"coef": [...], "basis": [...]}: the tensors each TopKMaskedAttention node reads, in block
    order; validation reads the coefficients out of a runtime through these names."""
    return {name: [n.input[op_spec.INPUT_NAMES.index(name)] for n in nodes] for name in ("coef", "basis")}


def _block_scope(node):
    for prop in node.metadata_props:
        if prop.key == _NAME_SCOPES:
            try:
                scopes = json.loads(prop.value.replace("'", '"'))
            except json.JSONDecodeError:
                return None
            # [..., 'blocks.3', 'blocks.3.attn', 'topk_masked_attention']: the module path.
            return scopes[-2] if len(scopes) >= 2 and scopes[-2] else None
    return None


def _inline_op_function(proto):
    """Inline the op's function into the graph and fold the attribute constants."""
    import onnx.inliner
    import onnxscript.optimizer

    proto = onnx.inliner.inline_local_functions(proto)
    del proto.functions[:]
    # The inlined bodies read budget, scale and cls_rows through Constant nodes; folding
    # turns them (and the shape arithmetic around them) into initializers.
    proto = onnxscript.optimizer.optimize(proto)
    kept = [imp for imp in proto.opset_import if imp.domain != op_spec.OP_DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    return proto


def format_export(summary: dict) -> str:
    """A short human summary of export_onnx's result."""
    form = summary["attention"]
    version = f" v{summary['op_version']}" if summary.get("op_version", 1) != 1 else ""
    what = {"custom": f"{summary['custom_nodes']} TopKMaskedAttention{version} nodes + local function",
            "decomposed": "standard ops only", "dense": "dense teacher"}[form]
    lines = [
        f"wrote {summary['path']} ({summary['bytes'] / 1e6:.1f} MB, {summary['seconds']:.1f} s)",
        f"  {form} graph of {summary['model']}: {what}; {summary['nodes']} nodes",
        f"  opset {summary['opset']}, {summary['dtype']}, input '{summary['input'][0]}' {summary['input'][1]}, "
        f"budget {summary['budget']} (keep rate {summary['keep_rate']})",
    ]
    if not summary["trained"]:
        lines.append("  note: random predictor (basis pruned on the fly): for deployment testing, not accuracy")
    return "\n".join(lines)
