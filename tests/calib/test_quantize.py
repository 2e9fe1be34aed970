"""Q/DQ graphs from ``sparsifiner.calib``: TensorRT placement, float custom op / predictor / body, metadata.

Structural checks are independent of the library's own post-condition: every node the
analysis keeps in float must come out of quantisation byte-identical (a Q/DQ on its
path would have rewired its inputs), and every DequantizeLinear must feed a quantised
MatMul/Gemm/Conv only. The demo ViT has 6 blocks with 4 weight MatMuls each, plus the
patch Conv and the head Gemm: 26 quantised layers.
"""
import json

import numpy as np
import onnx

from sparsifiner.artifacts import metadata_of
from sparsifiner.calib.graph import float_nodes
from sparsifiner.calib.quantize import QUANT_KEY, qdq_on_float_nodes

BLOCKS = 6
QUANTIZED_LAYERS = 4 * BLOCKS + 2
QDQ = ("QuantizeLinear", "DequantizeLinear")


def coef_names(model):
    return metadata_of(model)["sparsifiner"]["op_inputs"]["coef"]


def check_placement(source, quantized, floats):
    nodes = {n.name: n for n in quantized.graph.node}
    for name in floats.all():
        original = next(n for n in source.graph.node if n.name == name)
        assert nodes[name].SerializeToString() == original.SerializeToString(), f"{name} changed"
    consumers = {}
    for node in quantized.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inits = {i.name: i for i in quantized.graph.initializer}
    dq = [n for n in quantized.graph.node if n.op_type == "DequantizeLinear"]
    assert dq
    for node in dq:
        users = consumers.get(node.output[0], [])
        assert users and all(u.op_type in ("MatMul", "Gemm", "Conv") and u.name not in floats.all() for u in users)
        zero = onnx.numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        assert not zero.any(), "symmetric: zero point 0"
    weight_dq = [n for n in dq if n.input[0] in inits]
    assert len(weight_dq) == QUANTIZED_LAYERS  # every weight, biases stay float
    assert all(onnx.numpy_helper.to_array(inits[n.input[1]]).size > 1 for n in weight_dq), "per-channel weights"
    quantized_layers = {u.name for n in dq for u in consumers[n.output[0]]}
    assert len(quantized_layers) == QUANTIZED_LAYERS
    assert qdq_on_float_nodes(quantized, floats.all()) == []


def check_file(path, source, mode):
    from sparsifiner.export import onnx_op

    model = onnx.load(str(path))
    onnx_op.register_schema()
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 10
    assert {i.domain: i.version for i in model.opset_import}[""] == 19
    assert [f.name for f in model.functions] == [f.name for f in source.functions]
    meta, before = {p.key: p.value for p in model.metadata_props}, {p.key: p.value for p in source.metadata_props}
    assert {k: v for k, v in meta.items() if k not in (QUANT_KEY, "sparsifiner.opset")} == \
        {k: v for k, v in before.items() if k != "sparsifiner.opset"}
    assert json.loads(meta[QUANT_KEY])["mode"] == mode
    zero_types = {i.data_type for i in model.graph.initializer if i.name.endswith("_zero_point")}
    assert zero_types == {onnx.TensorProto.INT8 if mode == "int8" else onnx.TensorProto.FLOAT8E4M3FN}
    return model


def test_custom_graph_int8(demo_export, calibrated):
    source = onnx.load(str(demo_export("custom", 18)))
    path, summary = calibrated("custom", "int8")
    floats = float_nodes(source, coef_names(source))
    assert len(floats.custom) == BLOCKS and not floats.body
    assert len(floats.predictor) % BLOCKS == 0 and floats.predictor
    quantized = check_file(path, source, "int8")
    check_placement(source, quantized, floats)
    assert summary["float_nodes"] == floats.counts() and summary["opset"] == 19
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["settings"]["mode"] == "int8" and sidecar["settings"]["method"] == "minmax"
    assert sidecar["calibration"]["images"] == 16 and sidecar["qdq_nodes"]["QuantizeLinear"] == QUANTIZED_LAYERS


def test_predictor_is_what_only_the_coefficients_need(demo_export):
    model = onnx.load(str(demo_export("custom", 18)))
    floats = float_nodes(model, coef_names(model))
    producers = {o: n for n in model.graph.node for o in n.output}
    for coef in coef_names(model):
        assert producers[coef].name in floats.predictor
    # The attention's q/k/v projection feeds the op directly: never part of the predictor.
    for node in model.graph.node:
        if node.domain == "sparsifiner":
            for name in node.input[:3]:
                assert name not in producers or producers[name].name not in floats.predictor


def test_decomposed_graph_fp8_keeps_body_float(demo_export, calibrated):
    source = onnx.load(str(demo_export("decomposed", 19)))
    floats = float_nodes(source, coef_names(source))
    body = {n.name: n for n in source.graph.node if n.name in set(floats.body)}
    assert not floats.custom
    ops = [n.op_type for n in body.values()]
    assert ops.count("TopK") == ops.count("ScatterElements") == ops.count("Softmax") == BLOCKS
    assert ops.count("MatMul") == 3 * BLOCKS  # q k^T, coef basis, probs v
    assert all(n.op_type != "TopK" or n.name in body for n in source.graph.node)
    path, summary = calibrated("decomposed", "fp8")
    assert summary["settings"]["method"] == "distribution"
    check_placement(source, check_file(path, source, "fp8"), floats)


def test_report_runs_both_graphs_in_onnx_runtime(calibrated):
    from sparsifiner.calib.report import quantized_session

    path, summary = calibrated("custom", "int8")
    report = summary["report"]
    assert report["images"] == 48 and report["held_out"] and report["accuracy"] is not None
    assert 0.0 <= report["top1_agreement"] <= 1.0 and report["disagreements"] == round(48 * (1 - report["top1_agreement"]))
    # int8 of a random-weights model: logits move, but by a small part of their size.
    assert 0 < report["logit_error"]["mean_abs"] < 0.2 * report["logit_scale"]
    session = quantized_session(onnx.load(str(path)))
    out = session.run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})[0]
    assert out.shape == (3, 10) and np.isfinite(out).all()
