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

Version 2 (tile-shared selection, ``op_spec.TILE_ATTRIBUTES``) has its own schema, body
(``function_proto(opset, version=2)``) and translation (``torch_translation_v2``). Its
body builds tile membership from the attributes (Range, Div, Mod), sums each tile's
coefficient rows with a 0/1 membership MatMul (exact on the value grids), takes the
tile's top-C with TopK, sorts it into key order, and picks each row's top-K among it
(K = C for tile, the budget for two_level) with a second TopK: ties go to the lower
position, which is the lower key index. Selection 0 makes every key a candidate (C = N),
which is version 1.

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
CUSTOM_OPSET_V2 = onnxscript.values.Opset(op_spec.OP_DOMAIN, op_spec.OP_VERSION_TILE)
# The opset the body is written against; its ops keep their semantics up to opset 24,
# so function_proto() only relabels the import to match the model's opset.
BODY_OPSET = 18
_FLOAT = onnx.TensorProto.FLOAT
# Masked-out keys get -inf added to their logit: exp(-inf) = 0 exactly, and every row
# keeps budget >= 1 finite logits, so the softmax never sees an all -inf row.
_NEG_INF = onnx.helper.make_tensor("neg_inf", _FLOAT, [1], [-math.inf])
_ZERO = onnx.helper.make_tensor("zero", _FLOAT, [1], [0.0])
_INT64 = onnx.TensorProto.INT64


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


@onnxscript.script(CUSTOM_OPSET_V2, default_opset=op)
def _body_v2(q, k, v, coef, basis, budget: int, scale: float, cls_rows: int = 1, selection: int = 0,
             grid_cols: int = 0, tile_rows: int = 8, tile_cols: int = 8, tile_budget: int = 0):
    qf = op.Cast(q, to=1)
    kf = op.Cast(k, to=1)
    vf = op.Cast(v, to=1)
    logits = op.Mul(op.MatMul(qf, op.Transpose(kf, perm=[0, 1, 3, 2])), op.Constant(value_float=scale))
    coef32 = op.Cast(coef, to=1)
    basis32 = op.Cast(basis, to=1)
    scores = op.MatMul(coef32, basis32)  # [B, H, M, N] row scores
    score_shape = op.Shape(scores)
    rows = op.Slice(score_shape, op.Constant(value_ints=[2]), op.Constant(value_ints=[3]))  # [1]: M
    keys = op.Slice(score_shape, op.Constant(value_ints=[3]), op.Constant(value_ints=[4]))  # [1]: N
    one = op.Constant(value_ints=[1])
    # Patch grid width (0: square) and tile of each row, numbered row-major over the tiles.
    given = op.Reshape(op.Constant(value_int=grid_cols), one)
    square = op.Cast(op.Floor(op.Add(op.Sqrt(op.Cast(rows, to=1)), op.Constant(value_floats=[0.5]))), to=7)
    width = op.Where(op.Greater(given, op.Constant(value_ints=[0])), given, square)
    th = op.Reshape(op.Constant(value_int=tile_rows), one)
    tw = op.Reshape(op.Constant(value_int=tile_cols), one)
    across = op.Div(op.Sub(op.Add(width, tw), one), tw)
    down = op.Div(op.Sub(op.Add(op.Div(rows, width), th), one), th)
    r = op.Range(op.Constant(value_int=0), op.Squeeze(rows, op.Constant(value_ints=[0])), op.Constant(value_int=1))
    tile = op.Add(op.Mul(op.Div(op.Div(r, width), th), across), op.Div(op.Mod(r, width), tw))  # [M]
    t = op.Range(op.Constant(value_int=0), op.Squeeze(op.Mul(across, down), op.Constant(value_ints=[0])),
                 op.Constant(value_int=1))
    member = op.Cast(op.Equal(op.Unsqueeze(t, op.Constant(value_ints=[1])), op.Unsqueeze(tile, op.Constant(value_ints=[0]))),
                     to=1)  # [T, M], 0/1
    # Tile scores: (sum of the tile's coefficient rows) @ basis, exact on the value grids.
    tile_scores = op.MatMul(op.MatMul(member, coef32), basis32)  # [B, H, T, N]
    b = op.Reshape(op.Constant(value_int=budget), one)
    given_c = op.Reshape(op.Constant(value_int=tile_budget), one)
    c = op.Where(op.Greater(given_c, op.Constant(value_ints=[0])), given_c, b)
    sel = op.Reshape(op.Constant(value_int=selection), one)
    c_eff = op.Where(op.Equal(sel, op.Constant(value_ints=[0])), keys, c)  # rows: every key is a candidate
    top_values, top = op.TopK(tile_scores, c_eff, axis=-1, largest=1, sorted=1)
    # Candidates in ascending key order (key indices are exact in fp32), then each row's tile's.
    ascending, order = op.TopK(op.Cast(top, to=1), c_eff, axis=-1, largest=0, sorted=1)
    candidates = op.Gather(op.Cast(ascending, to=7), tile, axis=2)  # [B, H, M, C]
    k_row = op.Where(op.Equal(sel, op.Constant(value_ints=[1])), c, b)
    row_values, pos = op.TopK(op.GatherElements(scores, candidates, axis=-1), k_row, axis=-1, largest=1, sorted=1)
    kept = op.GatherElements(candidates, pos, axis=-1)  # [B, H, M, K]
    keep = op.ConstantOfShape(op.Shape(kept), value=_ZERO)
    row_bias = op.ScatterElements(op.ConstantOfShape(score_shape, value=_NEG_INF), kept, keep, axis=-1)
    cls = op.Reshape(op.Constant(value_int=cls_rows), one)
    cls_shape = op.Concat(
        op.Slice(score_shape, op.Constant(value_ints=[0]), op.Constant(value_ints=[2])),
        cls,
        keys,
        axis=0,
    )
    bias = op.Concat(op.ConstantOfShape(cls_shape, value=_ZERO), row_bias, axis=2)
    probs = op.Softmax(op.Add(logits, bias), axis=-1)
    return op.CastLike(op.MatMul(probs, vf), q)


def function_proto(opset: int, version: int = op_spec.OP_VERSION) -> onnx.FunctionProto:
    """TopKMaskedAttention (op ``version`` 1 or 2) as a model-local function for a model of ONNX ``opset``."""
    tile = version == op_spec.OP_VERSION_TILE
    proto = (_body_v2 if tile else _body).to_function_proto()
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
    names = op_spec.ATTRIBUTE_NAMES_V2 if tile else op_spec.ATTRIBUTE_NAMES
    if sorted(attrs) != sorted(names):
        raise AssertionError(f"function attributes {attrs} differ from op_spec {names}")
    return proto


def op_schema(version: int = op_spec.OP_VERSION) -> onnx.defs.OpSchema:
    """The node's schema: inputs, output, typed attributes (cls_rows defaults to 1; version 2 adds the tile ones)."""
    OpSchema = onnx.defs.OpSchema
    floats = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    types = {"q": "T", "k": "T", "v": "T", "coef": "TC", "basis": "TB"}
    attributes = op_spec.ATTRIBUTES_V2 if version == op_spec.OP_VERSION_TILE else op_spec.ATTRIBUTES
    return OpSchema(
        op_spec.OP_NAME, op_spec.OP_DOMAIN, version,
        doc="Budgeted top-k masked attention of Sparsifiner (see sparsifiner.op_spec).",
        inputs=[OpSchema.FormalParameter(name, types[name]) for name in op_spec.INPUT_NAMES],
        outputs=[OpSchema.FormalParameter(op_spec.OUTPUT_NAMES[0], "T")],
        type_constraints=[("T", floats, "q, k, v and out"), ("TC", floats, "coefficients (float in fp16 models)"),
                          ("TB", floats, "pruned basis")],
        attributes=[_schema_attribute(attr) for attr in attributes] + _plugin_attributes(version),
    )


def _schema_attribute(attr: op_spec.Attribute) -> onnx.defs.OpSchema.Attribute:
    """An op_spec attribute as an ONNX schema attribute: typed when required, with its default otherwise."""
    OpSchema = onnx.defs.OpSchema
    if attr.default is None:
        kind = OpSchema.AttrType.INT if attr.type == "int" else OpSchema.AttrType.FLOAT
        return OpSchema.Attribute(attr.name, kind, attr.doc)
    return OpSchema.Attribute(attr.name, onnx.helper.make_attribute(attr.name, attr.convert(attr.default)), attr.doc)


def _plugin_attributes(version: int = op_spec.OP_VERSION) -> list:
    """The string attributes naming the TensorRT plugin (op_spec.PLUGIN_NODE_ATTRIBUTES), optional.

    They are in the schema only so the ONNX checker accepts them on the node; the local
    function does not declare them and ONNX Runtime ignores them. Version 2 declares them
    without defaults: onnxscript writes defaults onto every node it emits, and no plugin
    implements version 2 yet.
    """
    OpSchema = onnx.defs.OpSchema
    if version != op_spec.OP_VERSION:
        return [OpSchema.Attribute(name, OpSchema.AttrType.STRING, "TensorRT plugin lookup (ONNX parser)", required=False)
                for name in op_spec.PLUGIN_NODE_ATTRIBUTES]
    return [OpSchema.Attribute(name, onnx.helper.make_attribute(name, value), "TensorRT plugin lookup (ONNX parser)")
            for name, value in op_spec.PLUGIN_NODE_ATTRIBUTES.items()]


def register_schema() -> None:
    """Register the op's schemas (versions 1 and 2) in this process once (onnx >= 1.16)."""
    if not onnx.defs.has(op_spec.OP_NAME, op_spec.OP_DOMAIN):
        onnx.defs.register_schema(op_schema())
    latest = onnx.defs.get_schema(op_spec.OP_NAME, op_spec.OP_VERSION_TILE, op_spec.OP_DOMAIN)
    if latest.since_version < op_spec.OP_VERSION_TILE:
        onnx.defs.register_schema(op_schema(op_spec.OP_VERSION_TILE))


def torch_translation(q, k, v, coef, basis, budget: int, scale: float, cls_rows: int):
    """custom_translation_table entry: one TopKMaskedAttention node per call."""
    register_schema()
    attrs = op_spec.typed_attributes({op_spec.ATTR_BUDGET: budget, op_spec.ATTR_SCALE: scale,
                                      op_spec.ATTR_CLS_ROWS: cls_rows})
    return getattr(CUSTOM_OPSET, op_spec.OP_NAME)(q, k, v, coef, basis, **attrs)


def torch_translation_v2(q, k, v, coef, basis, budget: int, scale: float, cls_rows: int, selection: int,
                         grid_cols: int, tile_rows: int, tile_cols: int, tile_budget: int):
    """custom_translation_table entry of the version-2 op: one version-2 TopKMaskedAttention node."""
    register_schema()
    attrs = op_spec.typed_attributes_v2({
        op_spec.ATTR_BUDGET: budget, op_spec.ATTR_SCALE: scale, op_spec.ATTR_CLS_ROWS: cls_rows,
        op_spec.ATTR_SELECTION: selection, op_spec.ATTR_GRID_COLS: grid_cols, op_spec.ATTR_TILE_ROWS: tile_rows,
        op_spec.ATTR_TILE_COLS: tile_cols, op_spec.ATTR_TILE_BUDGET: tile_budget})
    return getattr(CUSTOM_OPSET_V2, op_spec.OP_NAME)(q, k, v, coef, basis, **attrs)


def single_node_model(shape, rank: int, budget: int, scale: float, cls_rows: int = op_spec.DEFAULT_CLS_ROWS,
                      dtype=onnx.TensorProto.FLOAT, coef_dtype=onnx.TensorProto.FLOAT, opset: int = 18,
                      batch_dim: bool = False, selection: "op_spec.Selection | None" = None) -> onnx.ModelProto:
    """A one-node model: inputs q, k, v [B, H, N, d], coef [B, H, N-c, R], basis [R, N]; the op's
    local function attached (checks, op-level benchmarks, selection probes). ``batch_dim``
    makes B dynamic; a tile ``selection`` makes it a version-2 node."""
    register_schema()
    b, h, n, d = shape
    lead = ["batch" if batch_dim else b, h]
    inputs = [onnx.helper.make_tensor_value_info(name, dtype, [*lead, n, d]) for name in ("q", "k", "v")]
    inputs.append(onnx.helper.make_tensor_value_info("coef", coef_dtype, [*lead, n - cls_rows, rank]))
    inputs.append(onnx.helper.make_tensor_value_info("basis", dtype, [rank, n]))
    attrs = op_spec.typed_attributes({op_spec.ATTR_BUDGET: budget, op_spec.ATTR_SCALE: scale,
                                      op_spec.ATTR_CLS_ROWS: cls_rows})
    version = op_spec.op_version_for(selection)
    if version == op_spec.OP_VERSION_TILE:
        attrs.update(selection.attributes())
    node = onnx.helper.make_node(op_spec.OP_NAME, list(op_spec.INPUT_NAMES), ["out"], domain=op_spec.OP_DOMAIN, **attrs)
    output = onnx.helper.make_tensor_value_info("out", dtype, [*lead, n, d])
    graph = onnx.helper.make_graph([node], "op", inputs, [output])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset),
                                                         onnx.helper.make_opsetid(op_spec.OP_DOMAIN, version)],
                                   functions=[function_proto(opset, version)])
    onnx.checker.check_model(model, full_check=True)
    return model
