"""ONNX Runtime sessions for exported Sparsifiner graphs, with three ways to run the op.

A custom-form graph carries TopKMaskedAttention nodes plus a model-local function of
the same name. ``op_backend`` picks how ONNX Runtime executes them:

* "function": stock ONNX Runtime inlines the local function (standard ops).
* "native": the C++ CPU kernel, registered from the custom-op library that
  ``sparsifiner.runtime.ort_native`` builds (on demand, cached); a registered kernel
  takes precedence over the local function, so the graph is used as it is.
* "auto" (the default): "native" when that library is already built, else "function".
* "extensions": the op itself runs, as an onnxruntime-extensions Python op whose
  body is the eager reference (``sparsifiner.ops.reference``). Extensions' Python ops
  live in the domain ``ai.onnx.contrib`` and take fixed types, so a copy of the graph
  is rewritten at load time: each node moves to that domain (fp16/bf16 tensors are
  cast to fp32 around it), and the local function is dropped so nothing can fall
  back to it. The file on disk is never changed. Version-2 nodes (tile-shared selection)
  run a second Python op that takes the tile attributes too.

Graphs without the op (decomposed, dense) run the same way under either backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from sparsifiner import op_spec
from sparsifiner.errors import SparsifinerError

OP_BACKENDS = ("auto", "function", "native", "extensions")
# How many times the extensions op ran in this process (tests check it is used).
EXTENSIONS_OP_CALLS = {"count": 0}
_REGISTERED: dict = {}


def load_model_proto(path: Union[str, Path]):
    import onnx

    path = Path(path)
    if not path.is_file():
        raise SparsifinerError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise SparsifinerError(f"{path} is not a readable ONNX file (corrupt or truncated): export it again") from exc


def with_outputs(model, names):
    """A copy of ``model`` that also returns the intermediate tensors ``names`` (typed by shape
    inference); the file on disk is untouched."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    missing = [n for n in names if n not in known]
    if missing:
        raise SparsifinerError(f"the graph has no typed tensor {missing[0]!r}: export it again with this version")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(known[n] for n in names if n not in present)
    return copy


def has_custom_op(model) -> bool:
    return any(n.domain == op_spec.OP_DOMAIN and n.op_type == op_spec.OP_NAME for n in model.graph.node)


def op_version(model) -> int:
    """The version of the op's domain the graph imports (1: row selection, 2: tile-shared selection)."""
    return {imp.domain: imp.version for imp in model.opset_import}.get(op_spec.OP_DOMAIN, op_spec.OP_VERSION)


def resolve_op_backend(op_backend: str, model=None) -> str:
    """The backend a session with ``op_backend`` uses: "auto" becomes "native" when built, else "function".

    The native kernel implements op version 1 only: with a version-2 ``model`` "auto" becomes
    "function" and "native" is refused."""
    if op_backend not in OP_BACKENDS:
        raise SparsifinerError(f"--ort-op must be one of {', '.join(OP_BACKENDS)}; got {op_backend!r}")
    row_op = model is None or op_version(model) == op_spec.OP_VERSION
    if op_backend == "auto":
        from sparsifiner.runtime.ort_native import native_available

        return "native" if row_op and native_available() else "function"
    if op_backend == "native" and not row_op:
        raise SparsifinerError(f"the native CPU kernel implements op version {op_spec.OP_VERSION} (row selection) and "
                               f"this graph uses version {op_version(model)} (tile selection): use --ort-op function "
                               "or extensions")
    return op_backend


def create_session(model_or_path, op_backend: str = "auto", providers=("CPUExecutionProvider",),
                   threads: int = 0):
    """An InferenceSession for an exported graph; see the module docstring for op_backend."""
    import onnxruntime as ort

    model = load_model_proto(model_or_path) if isinstance(model_or_path, (str, Path)) else model_or_path
    op_backend = resolve_op_backend(op_backend, model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if op_backend == "native" and has_custom_op(model):
        from sparsifiner.runtime.ort_native import native_library_path

        options.register_custom_ops_library(str(native_library_path()))
    if op_backend == "extensions" and has_custom_op(model):
        model = route_to_extensions(model)
        from onnxruntime_extensions import get_library_path

        options.register_custom_ops_library(get_library_path())
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SparsifinerError(f"ONNX Runtime cannot load the graph: {first}") from exc


def route_to_extensions(model):
    """A copy of ``model`` whose TopKMaskedAttention nodes run the extensions op (a Python op running the reference)."""
    import onnx

    try:
        from onnxruntime_extensions import PyOp  # noqa: F401  (import check only)
    except ImportError as exc:
        raise SparsifinerError("--ort-op extensions needs onnxruntime-extensions: pip install onnxruntime-extensions") from exc
    model = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    domain = _contrib_domain()
    op_type = register_extensions_op(op_version(model))
    float32 = onnx.TensorProto.FLOAT
    nodes = []
    for node in model.graph.node:
        if not (node.domain == op_spec.OP_DOMAIN and node.op_type == op_spec.OP_NAME):
            nodes.append(node)
            continue
        # Python ops cannot take float16 (the process aborts), so the op is fp32 and
        # other float types are cast around it. Exact: the reference upcasts to fp32 first
        # and rounds its fp32 result to the input type once, as the Cast back does.
        inputs = []
        for name in node.input:
            if types.get(name, float32) != float32:
                nodes.append(onnx.helper.make_node("Cast", [name], [f"{name}.{node.name}.f32"], to=float32))
                name = f"{name}.{node.name}.f32"
            inputs.append(name)
        out_type = types.get(node.input[0], float32)
        outputs = list(node.output) if out_type == float32 else [f"{node.output[0]}.f32"]
        attrs = list(node.attribute)
        pyop = onnx.helper.make_node(op_type, inputs, outputs, name=node.name, domain=domain)
        pyop.attribute.extend(attrs)
        nodes.append(pyop)
        if out_type != float32:
            nodes.append(onnx.helper.make_node("Cast", outputs, list(node.output), to=out_type))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    keep = [f for f in model.functions if not (f.domain == op_spec.OP_DOMAIN and f.name == op_spec.OP_NAME)]
    del model.functions[:]
    model.functions.extend(keep)
    imports = [imp for imp in model.opset_import if imp.domain not in (op_spec.OP_DOMAIN, domain)]
    imports.append(onnx.helper.make_opsetid(domain, 1))
    del model.opset_import[:]
    model.opset_import.extend(imports)
    return model


def _contrib_domain() -> str:
    from onnxruntime_extensions import _ocos

    return _ocos.default_opset_domain()


def register_extensions_op(version: int = op_spec.OP_VERSION) -> str:
    """Register the fp32 Python op of op ``version`` (1, or 2 for tiles) once per process; returns its op_type."""
    key = "op_type" if version == op_spec.OP_VERSION else f"op_type_v{version}"
    if key in _REGISTERED:
        return _REGISTERED[key]
    from onnxruntime_extensions import PyOp, onnx_op

    tile = version == op_spec.OP_VERSION_TILE
    op_type = op_spec.OP_NAME + ("V2" if tile else "")
    onnx_op(
        op_type=op_type,
        inputs=[PyOp.dt_float] * len(op_spec.INPUT_NAMES),
        outputs=[PyOp.dt_float],
        attrs={a.name: PyOp.dt_int64 if a.type == "int" else PyOp.dt_float
               for a in (op_spec.ATTRIBUTES_V2 if tile else op_spec.ATTRIBUTES)},
    )(_extensions_op_v2 if tile else _extensions_op)
    _REGISTERED[key] = op_type
    return op_type


def _extensions_op_v2(q, k, v, coef, basis, **attrs):
    """Version 2 on fp32 numpy arrays: the eager reference with the node's selection."""
    typed = op_spec.typed_attributes_v2(attrs)
    selection = op_spec.Selection.from_attributes(typed)
    return _extensions_op(q, k, v, coef, basis, **{name: typed[name] for name in op_spec.ATTRIBUTE_NAMES},
                          selection=selection)


def _extensions_op(q, k, v, coef, basis, selection=None, **attrs):
    """The op on fp32 numpy arrays: the eager reference."""
    import numpy as np
    import torch

    from sparsifiner.ops.reference import topk_masked_attention_reference

    EXTENSIONS_OP_CALLS["count"] += 1
    tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (q, k, v, coef, basis)]
    with torch.no_grad():
        out = topk_masked_attention_reference(*tensors, **op_spec.typed_attributes(attrs), selection=selection)
    return out.numpy()
