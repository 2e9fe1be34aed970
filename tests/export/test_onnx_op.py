"""The TopKMaskedAttention node, schema and local function against the eager reference.

Scores are built from small multiples of 1/8 so every product and sum is exact in
fp32: ONNX Runtime and PyTorch then see identical scores, ties included, and any
difference in the kept keys is a tie-breaking bug rather than rounding.
"""
import numpy as np
import onnx
import pytest
import torch

from sparsifiner import op_spec
from sparsifiner.export import onnx_op
from sparsifiner.ops.reference import topk_masked_attention_reference
from sparsifiner.runtime.ort import EXTENSIONS_OP_CALLS, create_session

TYPES = {np.float32: onnx.TensorProto.FLOAT, np.float16: onnx.TensorProto.FLOAT16}


def op_model(shape, rank, budget, scale, cls_rows, dtype=np.float32, opset=18):
    """A one-node model: inputs q, k, v, coef, basis; the op's local function attached."""
    onnx_op.register_schema()
    b, h, n, d = shape
    elem = TYPES[dtype]
    inputs = [onnx.helper.make_tensor_value_info(name, elem, list(shape)) for name in ("q", "k", "v")]
    inputs.append(onnx.helper.make_tensor_value_info("coef", onnx.TensorProto.FLOAT, [b, h, n - cls_rows, rank]))
    inputs.append(onnx.helper.make_tensor_value_info("basis", elem, [rank, n]))
    node = onnx.helper.make_node(op_spec.OP_NAME, list(op_spec.INPUT_NAMES), ["out"], domain=op_spec.OP_DOMAIN,
                                 **{op_spec.ATTR_BUDGET: budget, op_spec.ATTR_SCALE: scale,
                                    op_spec.ATTR_CLS_ROWS: cls_rows})
    graph = onnx.helper.make_graph([node], "op", inputs, [onnx.helper.make_tensor_value_info("out", elem, list(shape))])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset),
                                                         onnx.helper.make_opsetid(op_spec.OP_DOMAIN, op_spec.OP_VERSION)],
                                   functions=[onnx_op.function_proto(opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def exact_inputs(shape, rank, cls_rows, seed, dtype=np.float32):
    """q, k, v random; coef and basis on a 1/8 grid with many exact ties in their product."""
    rng = np.random.default_rng(seed)
    b, h, n, d = shape
    q, k, v = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    coef = (rng.integers(0, 3, (b, h, n - cls_rows, rank)) / 8).astype(np.float32)
    coef[..., rank // 2:] = 0  # pruned coefficients: whole rows of the score map tie at 0
    coef[0, 0, :3] = 0
    basis = (rng.integers(0, 4, (rank, n)) / 8).astype(dtype)
    basis[:, n // 2: n // 2 + 5] = basis[:, :5]  # duplicate key columns: exact ties
    return {"q": q, "k": k, "v": v, "coef": coef, "basis": basis}


def reference(feed, budget, scale, cls_rows):
    tensors = [torch.from_numpy(feed[name]) for name in op_spec.INPUT_NAMES]
    return topk_masked_attention_reference(*tensors, budget, scale, cls_rows).float().numpy()


@pytest.mark.parametrize("shape,rank,budget,cls_rows", [
    ((2, 3, 65, 59), 32, 16, 1),     # demo N, awkward head dim
    ((1, 2, 197, 64), 32, 49, 1),    # DeiT N and budget
    ((2, 1, 197, 16), 8, 1, 1),      # budget 1: ties decide everything
    ((1, 2, 33, 8), 4, 33, 1),       # budget N: dense
    ((1, 1, 40, 8), 4, 7, 0),        # no CLS row
    ((1, 1, 40, 8), 4, 7, 3),        # several dense leading rows
])
@pytest.mark.parametrize("backend", ["function", "extensions"])
def test_op_matches_reference_with_ties(shape, rank, budget, cls_rows, backend):
    scale = shape[-1] ** -0.5
    model = op_model(shape, rank, budget, scale, cls_rows)
    feed = exact_inputs(shape, rank, cls_rows, seed=sum(shape))
    before = EXTENSIONS_OP_CALLS["count"]
    out = create_session(model, backend).run(None, feed)[0]
    np.testing.assert_allclose(out, reference(feed, budget, scale, cls_rows), atol=2e-6, rtol=1e-5)
    assert (EXTENSIONS_OP_CALLS["count"] > before) == (backend == "extensions")


@pytest.mark.parametrize("backend", ["function", "extensions"])
def test_op_fp16_rounds_like_reference(backend):
    shape, rank, budget = (2, 2, 65, 64), 32, 16
    model = op_model(shape, rank, budget, 0.125, 1, dtype=np.float16)
    feed = exact_inputs(shape, rank, 1, seed=7, dtype=np.float16)
    out = create_session(model, backend).run(None, feed)[0]
    assert out.dtype == np.float16
    # Both upcast to fp32 and round the result to fp16 once; fp32 sums may differ in
    # order, which moves a value by at most one fp16 step.
    np.testing.assert_allclose(out.astype(np.float32), reference(feed, budget, 0.125, 1), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("opset", [17, 18, 21])
def test_function_is_valid_at_each_opset(opset):
    proto = onnx_op.function_proto(opset)
    assert {i.domain: i.version for i in proto.opset_import}[""] == opset
    model = op_model((1, 1, 9, 4), 2, 3, 0.5, 1, opset=opset)
    feed = exact_inputs((1, 1, 9, 4), 2, 1, seed=opset)
    np.testing.assert_allclose(create_session(model).run(None, feed)[0], reference(feed, 3, 0.5, 1), atol=2e-6)


def test_function_and_schema_follow_op_spec():
    proto = onnx_op.function_proto(18)
    assert (proto.domain, proto.name) == (op_spec.OP_DOMAIN, op_spec.OP_NAME)
    assert tuple(proto.input) == op_spec.INPUT_NAMES and tuple(proto.output) == op_spec.OUTPUT_NAMES
    attrs = set(proto.attribute) | {a.name for a in proto.attribute_proto}
    assert attrs == set(op_spec.ATTRIBUTE_NAMES)
    ops = {node.op_type for node in proto.node}
    assert {"TopK", "ScatterElements", "Softmax", "MatMul"} <= ops
    assert all(node.domain in ("", "ai.onnx") for node in proto.node)
    schema = onnx_op.op_schema()
    assert (schema.domain, schema.name, schema.since_version) == (op_spec.OP_DOMAIN, op_spec.OP_NAME, op_spec.OP_VERSION)
    assert [i.name for i in schema.inputs] == list(op_spec.INPUT_NAMES)
    assert set(schema.attributes) == set(op_spec.ATTRIBUTE_NAMES) | set(op_spec.PLUGIN_NODE_ATTRIBUTES)
    assert schema.attributes[op_spec.ATTR_PLUGIN_NAMESPACE].default_value.s == op_spec.PLUGIN_NAMESPACE.encode()
    assert schema.attributes[op_spec.ATTR_CLS_ROWS].default_value.i == op_spec.DEFAULT_CLS_ROWS
