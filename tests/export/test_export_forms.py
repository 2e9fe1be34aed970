"""The three export forms of both test models: structure, checker, ONNX Runtime vs PyTorch."""
import numpy as np
import onnx
import pytest
import torch

from sparsifiner import __version__, op_spec
from sparsifiner.artifacts import metadata_of
from sparsifiner.runtime.ort import EXTENSIONS_OP_CALLS, create_session

FORMS = ("custom", "decomposed", "dense")
MODELS = ("demo", "deit")
BLOCKS = {"demo": 6, "deit": 2}
TOKENS = {"demo": 65, "deit": 197}


def run_both(model, session, torch_model, batch, seed=0, dtype=np.float32):
    shape = session.get_inputs()[0].shape
    x = np.random.default_rng(seed).standard_normal((batch, *shape[1:]), dtype=np.float32)
    with torch.inference_mode():
        ref = torch_model(torch.from_numpy(x)).numpy()
    out = session.run(None, {"input": x.astype(dtype)})[0].astype(np.float32)
    return out, ref


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("form", FORMS)
def test_dynamic_batch_matches_pytorch(exported, torch_models, model, form):
    path, _ = exported(model, form)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = create_session(path)
    for batch in (1, 3, 7):
        out, ref = run_both(model, session, torch_models(model, form), batch, seed=batch)
        assert out.shape == ref.shape and out.shape[0] == batch
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("form", FORMS)
def test_fixed_batch(exported, torch_models, model, form):
    path, _ = exported(model, form, batch=3)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    session = create_session(path)
    out, ref = run_both(model, session, torch_models(model, form), 3)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    with pytest.raises(Exception):
        session.run(None, {"input": np.zeros((2, *session.get_inputs()[0].shape[1:]), np.float32)})


@pytest.mark.parametrize("model", MODELS)
def test_custom_form_runs_the_op_kernel(exported, torch_models, model):
    path, _ = exported(model, "custom")
    before = EXTENSIONS_OP_CALLS["count"]
    out, ref = run_both(model, create_session(path, "extensions"), torch_models(model, "custom"), 3)
    assert EXTENSIONS_OP_CALLS["count"] - before == BLOCKS[model]
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("model", MODELS)
def test_graph_structure_per_form(exported, model):
    custom = onnx.load(str(exported(model, "custom")[0]))
    nodes = [n for n in custom.graph.node if n.domain == op_spec.OP_DOMAIN]
    assert len(nodes) == BLOCKS[model]
    assert [(f.domain, f.name) for f in custom.functions] == [(op_spec.OP_DOMAIN, op_spec.OP_NAME)]
    assert {i.domain: i.version for i in custom.opset_import}[op_spec.OP_DOMAIN] == op_spec.OP_VERSION
    inits = {i.name: tuple(i.dims) for i in custom.graph.initializer}
    for i, node in enumerate(nodes):  # the pruned basis is a constant initializer [R, N]
        assert node.name == f"blocks.{i}.attn.topk_masked_attention"
        assert inits[node.input[4]] == (32, TOKENS[model])

    decomposed = onnx.load(str(exported(model, "decomposed")[0]))
    ops = {n.op_type for n in decomposed.graph.node}
    assert all(n.domain in ("", "ai.onnx") for n in decomposed.graph.node) and not decomposed.functions
    assert {"TopK", "ScatterElements", "Softmax"} <= ops
    assert sum(n.op_type == "TopK" for n in decomposed.graph.node) == BLOCKS[model]

    dense = onnx.load(str(exported(model, "dense")[0]))
    assert not dense.functions and not {"TopK", op_spec.OP_NAME} & {n.op_type for n in dense.graph.node}


def test_exported_node_carries_op_spec_names(exported):
    proto = onnx.load(str(exported("deit", "custom")[0]))
    node = next(n for n in proto.graph.node if n.op_type == op_spec.OP_NAME)
    assert node.domain == op_spec.OP_DOMAIN
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert set(attrs) == set(op_spec.ATTRIBUTE_NAMES) | set(op_spec.PLUGIN_NODE_ATTRIBUTES)
    # TensorRT's parser finds the plugin through these two (TensorRT-RTX inlines the function without them).
    assert attrs[op_spec.ATTR_PLUGIN_NAMESPACE] == b"sparsifiner" and attrs[op_spec.ATTR_PLUGIN_VERSION] == b"1"
    assert attrs[op_spec.ATTR_BUDGET] == 49  # ceil(0.25 * 196 patches)
    assert attrs[op_spec.ATTR_SCALE] == pytest.approx(64 ** -0.5)
    assert attrs[op_spec.ATTR_CLS_ROWS] == 1
    assert len(node.input) == len(op_spec.INPUT_NAMES) and len(node.output) == len(op_spec.OUTPUT_NAMES)


def test_metadata(exported):
    path, summary = exported("deit", "custom")
    meta = metadata_of(onnx.load(str(path), load_external_data=False))
    info, pre = meta["sparsifiner"], meta["preprocess"]
    assert info["version"] == __version__ and info["attention"] == "custom"
    assert info["budget"] == 49 and info["keep_rate"] == 0.25 and info["trained"] is False
    assert info["source"]["model_name"] == "deit_tiny_patch16_224" and info["source"]["timm_kwargs"] == {"depth": 2}
    assert pre["input_size"] == [3, 224, 224] and len(pre["mean"]) == len(pre["std"]) == 3
    assert pre["interpolation"] == "bicubic" and 0 < pre["crop_pct"] <= 1
    assert info["op"] == f"{op_spec.OP_DOMAIN}::{op_spec.OP_NAME}@{op_spec.OP_VERSION}"


def test_opset_17(exported, torch_models):
    path, _ = exported("demo", "custom", opset=17)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {i.domain: i.version for i in proto.opset_import}[""] == 17
    assert {i.domain: i.version for i in proto.functions[0].opset_import}[""] == 17
    out, ref = run_both("demo", create_session(path), torch_models("demo", "custom"), 2)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("form", FORMS)
def test_fp16_agreement(exported, torch_models, form, record_property):
    """fp16 graphs against the fp32 PyTorch model: measured, reported, bounded loosely."""
    path, _ = exported("deit", form, dtype="fp16")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    session = create_session(path, "extensions" if form == "custom" else "function")
    out, ref = run_both("deit", session, torch_models("deit", form), 7, dtype=np.float16)
    err = np.abs(out - ref)
    record_property("fp16_max_abs", float(err.max()))
    record_property("fp16_top1", float(np.mean(out.argmax(1) == ref.argmax(1))))
    print(f"fp16 {form}: max abs {err.max():.3g}, p99 {np.percentile(err, 99):.3g}, |ref| max {np.abs(ref).max():.3g}")
    np.testing.assert_allclose(out, ref, atol=2e-2, rtol=2e-2)


def test_settings_file_beside_the_export(exported):
    import json

    path, summary = exported("demo", "dense", batch=3)
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["summary"] == json.loads(json.dumps(summary))
    assert sidecar["export_settings"]["attention"] == "dense" and sidecar["export_settings"]["batch"] == 3
    assert sidecar["export_settings"]["source"]["model_name"] == "demo"
