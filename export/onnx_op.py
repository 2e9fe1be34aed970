"""The TopKMaskedAttention ONNX node, its schema and its standard-op function body.

Three pieces, all named from ``sparsifiner.op_spec``:

* ``register_schema()`` registers an ``onnx.defs.OpSchema`` for the op in this
  process, so onnxscript (and thus the torch exporter) can emit the node and the ONNX
  checker can check it. Other processes (ONNX Runtime, TensorRT) never need it.
* The node carries ``plugin_namespace`` and ``plugin_version`` as well (the exporter adds
  them): TensorRT's ONNX parser finds the plugin through them.
* ``torch_translation`` maps ``torch.ops.sparsifiner.topk_masked_attention`` onto one
  TopKMaskedAttention node (``custom_translation_table`` of ``torch.onnx.export``).
* ``function_proto(opset)`` is the op as a model-local ONNX function whose body uses
  standard ops only (MatMul, TopK, ScatterElements, Softmax). A runtime without a
  kernel for the op inlines it (ONNX Runtime does), and inlining it in every graph
  gives the ``decomposed`` export form: one source for both.

Numerics of the body follow the eager reference (``sparsifiner.ops.reference``):
scores, logits and softmax in fp32 whatever the input type, output cast back to the
type of q. Ties in TopK go to the lower key index: the ONNX spec requires it for
``sorted=1``, which is what the reference's stable descending sort does.
The body builds the [N-c, N] score map and the [N, N] logits; only a fused kernel
(the TensorRT plugin) avoids them.
"""
from __future__ import annotations

import math

import onnx
import onnxscript
from onnxscript import opset18 as op

from sparsifiner import op_spec

CUSTOM_OPSET = onnxscript.values.Opset(op_spec.OP_DOMAIN, op_spec.OP_VERSION)
# The opset the body is written against; its ops keep their semantics up to opset 24,
# so function_proto() only relabels the import to match the model's opset.
BODY_OPSET = 18
_FLOAT = onnx.TensorProto.FLOAT
# Masked-out keys get -inf added to their logit: exp(-inf) = 0 exactly, and every row
# keeps budget >= 1 finite logits, so the softmax never sees an all -inf row.
_NEG_INF = onnx.helper.make_tensor("neg_inf", _FLOAT, [1], [-math.inf])
_ZERO = onnx.helper.make_tensor("zero", _FLOAT, [1], [0.0])


@onnxscript.script(CUSTOM_OPSET, default_opset=op)
def _body(q, k, v, coef, basis, budget: int, scale: float, cls_rows: int = 1):
    # onnxscript turns each use of an attribute parameter (budget, scale, cls_rows) into
    # a Constant node that references the caller's attribute (ref_attr_name).
    qf = op.Cast(q, to=1)
    kf = op.Cast(k, to=1)
    vf = op.Cast(v, to=1)
    logits = op.Mul(op.MatMul(qf, op.Transpose(kf, perm=[0, 1, 3, 2])), op.Constant(value_float=scale))
    # Connectivity scores of the non-CLS rows: [B, H, N-c, R] x [R, N] -> [B, H, N-c, N].
    scores = op.MatMul(op.Cast(coef, to=1), op.Cast(basis, to=1))
    k_top = op.Reshape(op.Constant(value_int=budget), op.Constant(value_ints=[1]))
    top_values, top_index = op.TopK(scores, k_top, axis=-1, largest=1, sorted=1)
    score_shape = op.Shape(scores)
    # Additive mask: 0 at the kept keys, -inf elsewhere.
    keep = op.ConstantOfShape(op.Shape(top_index), value=_ZERO)
    row_bias = op.ScatterElements(op.ConstantOfShape(score_shape, value=_NEG_INF), top_index, keep, axis=-1)
    # The c leading (CLS) rows attend densely: a zero bias block of shape [B, H, c, N].
    cls = op.Reshape(op.Constant(value_int=cls_rows), op.Constant(value_ints=[1]))
    cls_shape = op.Concat(
        op.Slice(score_shape, op.Constant(value_ints=[0]), op.Constant(value_ints=[2])),
        cls,
        op.Slice(score_shape, op.Constant(value_ints=[3]), op.Constant(value_ints=[4])),
        axis=0,
    )
    bias = op.Concat(op.ConstantOfShape(cls_shape, value=_ZERO), row_bias, axis=2)
    probs = op.Softmax(op.Add(logits, bias), axis=-1)
    return op.CastLike(op.MatMul(probs, vf), q)


def function_proto(opset: int) -> onnx.FunctionProto:
    """TopKMaskedAttention as a model-local function for a model of ONNX ``opset``."""
    proto = _body.to_function_proto()
    proto.name = op_spec.OP_NAME
    proto.domain = op_spec.OP_DOMAIN
    if tuple(proto.input) != tuple(op_spec.INPUT_NAMES):
        raise AssertionError(f"function inputs {list(proto.input)} differ from op_spec {op_spec.INPUT_NAMES}")
    proto.output[0], old_out = op_spec.OUTPUT_NAMES[0], proto.output[0]
    for node in proto.node:
        for i, name in enumerate(node.output):
            if name == old_out:
                node.output[i] = op_spec.OUTPUT_NAMES[0]
    for node in proto.node:
        # onnxscript names body nodes n0, n1, ...; inlined once per block those names
        # repeat, which TensorRT warns about. Unnamed nodes get unique names on import.
        node.name = ""
    for imp in proto.opset_import:
        if imp.domain == "":
            imp.version = opset
    attrs = list(proto.attribute) + [a.name for a in proto.attribute_proto]
    if sorted(attrs) != sorted(op_spec.ATTRIBUTE_NAMES):
        raise AssertionError(f"function attributes {attrs} differ from op_spec {op_spec.ATTRIBUTE_NAMES}")
    return proto


def op_schema() -> onnx.defs.OpSchema:
    """The node's schema: inputs, output, typed attributes (cls_rows defaults to 1)."""
    OpSchema = onnx.defs.OpSchema
    floats = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    types = {"q": "T", "k": "T", "v": "T", "coef": "TC", "basis": "TB"}
    return OpSchema(
        op_spec.OP_NAME, op_spec.OP_DOMAIN, op_spec.OP_VERSION,
        doc="Budgeted top-k masked attention of Sparsifiner (see sparsifiner.op_spec).",
        inputs=[OpSchema.FormalParameter(name, types[name]) for name in op_spec.INPUT_NAMES],
        outputs=[OpSchema.FormalParameter(op_spec.OUTPUT_NAMES[0], "T")],
        type_constraints=[("T", floats, "q, k, v and out"), ("TC", floats, "coefficients (float in fp16 models)"),
                          ("TB", floats, "pruned basis")],
        attributes=[_schema_attribute(attr) for attr in op_spec.ATTRIBUTES] + _plugin_attributes(),
    )


def _schema_attribute(attr: op_spec.Attribute) -> onnx.defs.OpSchema.Attribute:
    """An op_spec attribute as an ONNX schema attribute: typed when required, with its default otherwise."""
    OpSchema = onnx.defs.OpSchema
    if attr.default is None:
        kind = OpSchema.AttrType.INT if attr.type == "int" else OpSchema.AttrType.FLOAT
        return OpSchema.Attribute(attr.name, kind, attr.doc)
    return OpSchema.Attribute(attr.name, onnx.helper.make_attribute(attr.name, attr.convert(attr.default)), attr.doc)


def _plugin_attributes() -> list:
    """The string attributes naming the TensorRT plugin (op_spec.PLUGIN_NODE_ATTRIBUTES), optional.

    They are in the schema only so the ONNX checker accepts them on the node; the local
    function does not declare them and ONNX Runtime ignores them.
    """
    OpSchema = onnx.defs.OpSchema
    return [OpSchema.Attribute(name, onnx.helper.make_attribute(name, value), "TensorRT plugin lookup (ONNX parser)")
            for name, value in op_spec.PLUGIN_NODE_ATTRIBUTES.items()]


def register_schema() -> None:
    """Register the op's schema in this process once (onnx >= 1.16)."""
    if not onnx.defs.has(op_spec.OP_NAME, op_spec.OP_DOMAIN):
        onnx.defs.register_schema(op_schema())


def torch_translation(q, k, v, coef, basis, budget: int, scale: float, cls_rows: int):
    """custom_translation_table entry: one TopKMaskedAttention node per call."""
    register_schema()
    attrs = op_spec.typed_attributes({op_spec.ATTR_BUDGET: budget, op_spec.ATTR_SCALE: scale,
                                      op_spec.ATTR_CLS_ROWS: cls_rows})
    return getattr(CUSTOM_OPSET, op_spec.OP_NAME)(q, k, v, coef, basis, **attrs)


def single_node_model(shape, rank: int, budget: int, scale: float, cls_rows: int = op_spec.DEFAULT_CLS_ROWS,
                      dtype=onnx.TensorProto.FLOAT, coef_dtype=onnx.TensorProto.FLOAT, opset: int = 18,
                      batch_dim: bool = False) -> onnx.ModelProto:
    """A one-node model: inputs q, k, v [B, H, N, d], coef [B, H, N-c, R], basis [R, N]; the op's
    local function attached (checks, op-level benchmarks, selection probes). ``batch_dim``
    makes B dynamic."""
    register_schema()
    b, h, n, d = shape
    lead = ["batch" if batch_dim else b, h]
    inputs = [onnx.helper.make_tensor_value_info(name, dtype, [*lead, n, d]) for name in ("q", "k", "v")]
    inputs.append(onnx.helper.make_tensor_value_info("coef", coef_dtype, [*lead, n - cls_rows, rank]))
    inputs.append(onnx.helper.make_tensor_value_info("basis", dtype, [rank, n]))
    attrs = op_spec.typed_attributes({op_spec.ATTR_BUDGET: budget, op_spec.ATTR_SCALE: scale,
                                      op_spec.ATTR_CLS_ROWS: cls_rows})
    node = onnx.helper.make_node(op_spec.OP_NAME, list(op_spec.INPUT_NAMES), ["out"], domain=op_spec.OP_DOMAIN, **attrs)
    output = onnx.helper.make_tensor_value_info("out", dtype, [*lead, n, d])
    graph = onnx.helper.make_graph([node], "op", inputs, [output])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset),
                                                         onnx.helper.make_opsetid(op_spec.OP_DOMAIN, op_spec.OP_VERSION)],
                                   functions=[function_proto(opset)])
    onnx.checker.check_model(model, full_check=True)
    return model
