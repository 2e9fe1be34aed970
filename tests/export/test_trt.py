"""Engines from the exported graphs with TensorRT-RTX, ahead of time and without a GPU.

Builds run in a child process (runtime.engine_build), for one compute capability (sm86),
with a dynamic batch profile. Custom-form graphs load the C++ plugin (built once per
session for sm_86, see tests/conftest.py): every TopKMaskedAttention node must become a
PLUGIN_V3 layer, and the engine's own layer list (from the build log) must show them as
custom layers. bf16 graphs are made by relabelling an fp16 export (see to_bf16): the
exporter writes fp32 and fp16, and its dtype list lives in export/settings.py.
"""
import json
import os

import numpy as np
import onnx
import pytest

from sparsifiner import op_spec
from sparsifiner.errors import SparsifinerError
from sparsifiner.runtime import trt_loader
from sparsifiner.runtime.engine_build import EngineBuildSettings, build_engine_file
from sparsifiner.runtime.engine_file import open_engine, sidecar_path
from sparsifiner.runtime.plugin_build import file_sha256

pytestmark = [
    pytest.mark.trt,
    pytest.mark.skipif(not trt_loader.tensorrt_available(),
                       reason="needs TensorRT or TensorRT-RTX (pip install 'sparsifiner[rtx]')"),
]
TARGET = "sm86"
BLOCKS = {"demo": 6, "deit": 2}


def needs_rtx():
    if not trt_loader.is_rtx(trt_loader.import_tensorrt()):
        pytest.skip("checks a TensorRT-RTX behaviour (classic TensorRT is installed)")


def to_bf16(src, dst):
    """An fp16 export relabelled as bf16: float16 initializers, constants, casts and value types become bfloat16."""
    f16, bf16 = onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16
    model = onnx.load(str(src))

    def convert(tensor):
        if tensor.data_type != f16:
            return
        bits = onnx.numpy_helper.to_array(tensor).astype(np.float32).view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
        tensor.ClearField("int32_data")
        tensor.data_type, tensor.raw_data = bf16, rounded.tobytes()

    for init in model.graph.initializer:
        convert(init)
    for node in list(model.graph.node) + [n for f in model.functions for n in f.node]:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == f16:
                attr.i = bf16
            if attr.type == onnx.AttributeProto.TENSOR:
                convert(attr.t)
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if value.type.tensor_type.elem_type == f16:
            value.type.tensor_type.elem_type = bf16
    for prop in model.metadata_props:
        if prop.key == "sparsifiner.dtype":
            prop.value = "bf16"
    onnx.save(model, str(dst))
    return dst


def build(onnx_path, tmp_path, **options):
    options.setdefault("compute_capability", TARGET)
    engine = tmp_path / (onnx_path.stem + ".engine")
    return build_engine_file(EngineBuildSettings(str(onnx_path), str(engine), **options))


def edited(src, dst, edit):
    model = onnx.load(str(src))
    edit(model)
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize("model,dtype", [("demo", "fp32"), ("deit", "fp32"), ("deit", "fp16"), ("deit", "bf16")])
def test_custom_form_builds_with_the_plugin(exported, plugin_library, tmp_path, model, dtype):
    path, _ = exported(model, "custom", dtype="fp16" if dtype == "bf16" else dtype)
    if dtype == "bf16":
        path = to_bf16(path, tmp_path / f"{model}-bf16.onnx")
    sidecar = build(path, tmp_path, plugin_library=str(plugin_library), min_batch=1, opt_batch=2, max_batch=6)
    nodes = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == op_spec.OP_NAME]
    assert len(nodes) == BLOCKS[model]
    assert sidecar["layers"]["plugin"] == nodes  # every custom node became a PLUGIN_V3 layer
    custom = [l for l in sidecar["layers"]["engine"] if l["type"] == "custom_layer"]
    assert [l["name"].split("_myl")[0] for l in custom] == nodes  # and a plugin layer of the engine
    assert sidecar["profile"] == {"min": 1, "opt": 2, "max": 6}
    torch_dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[dtype]
    assert sidecar["inputs"][0]["dtype"] == torch_dtype and sidecar["outputs"][0]["dtype"] == torch_dtype
    assert sidecar["inputs"][0]["shape"][0] == -1
    assert sidecar["plugin"]["sha256"] == file_sha256(plugin_library)
    assert sidecar["onnx"]["sha256"] == file_sha256(path) and sidecar["backend"]["name"] == "tensorrt_rtx"
    engine = open_engine(sidecar["engine"]["path"])
    assert engine.data[:4] == b"vtrt" and len(engine.data) == sidecar["engine"]["bytes"]


@pytest.mark.parametrize("form", ["decomposed", "dense"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_standard_forms_build_with_a_dynamic_batch(exported, tmp_path, form, dtype):
    path, _ = exported("deit", form, dtype=dtype)
    sidecar = build(path, tmp_path)
    assert sidecar["plugin"] is None and sidecar["layers"]["plugin"] == []
    assert sidecar["profile"] == {"min": 1, "opt": 4, "max": 8} and sidecar["engine"]["bytes"] > 1_000_000


def test_fixed_batch_takes_no_profile(exported, tmp_path):
    sidecar = build(exported("demo", "dense", batch=3)[0], tmp_path)
    assert sidecar["profile"] is None and sidecar["inputs"][0]["shape"] == [3, 3, 32, 32]
    with pytest.raises(SparsifinerError, match="fixed batch"):
        build(exported("demo", "dense", batch=3)[0], tmp_path, max_batch=4)


def test_custom_form_through_its_local_function(exported, tmp_path):
    """use_plugin=False drops the plugin attributes: TensorRT builds the standard-op function body."""
    sidecar = build(exported("demo", "custom")[0], tmp_path, use_plugin=False)
    assert sidecar["plugin"] is None and sidecar["layers"]["plugin"] == [] and sidecar["custom_nodes"] == 6
    assert not any(l["type"] == "custom_layer" for l in sidecar["layers"]["engine"])


def test_untagged_export_is_tagged_for_the_plugin(exported, plugin_library, tmp_path):
    """A custom graph without plugin_namespace (an older export) still gets the plugin, not the function."""
    def untag(model):
        for node in model.graph.node:
            kept = [a for a in node.attribute if a.name not in op_spec.PLUGIN_NODE_ATTRIBUTES]
            del node.attribute[:]
            node.attribute.extend(kept)

    path = edited(exported("demo", "custom")[0], tmp_path / "untagged.onnx", untag)
    sidecar = build(path, tmp_path, plugin_library=str(plugin_library))
    assert sidecar["retagged_nodes"] == 6 and len(sidecar["layers"]["plugin"]) == 6


def test_plugin_reports_a_bad_node_at_parse_time(exported, plugin_library, tmp_path):
    def oversize(model):
        node = next(n for n in model.graph.node if n.op_type == op_spec.OP_NAME)
        next(a for a in node.attribute if a.name == op_spec.ATTR_BUDGET).i = 1000

    path = edited(exported("demo", "custom")[0], tmp_path / "big_budget.onnx", oversize)
    with pytest.raises(SparsifinerError, match=r"TopKMaskedAttention 'blocks.0.attn.topk_masked_attention': "
                                               r"budget 1000 exceeds the N = 65 tokens"):
        build(path, tmp_path, plugin_library=str(plugin_library))
    assert not (tmp_path / "big_budget.engine").exists() and not sidecar_path(tmp_path / "big_budget.engine").exists()


def test_plugin_version_not_in_the_library(exported, plugin_library, tmp_path):
    def version_two(model):
        for node in model.graph.node:
            for attr in node.attribute:
                if attr.name == op_spec.ATTR_PLUGIN_VERSION:
                    attr.s = b"2"

    path = edited(exported("demo", "custom")[0], tmp_path / "v2.onnx", version_two)
    with pytest.raises(SparsifinerError) as info:
        build(path, tmp_path, plugin_library=str(plugin_library))
    message = str(info.value)
    assert "plugin not found: TopKMaskedAttention version 2 namespace 'sparsifiner'" in message
    assert str(plugin_library) in message and "TopKMaskedAttention v1 (sparsifiner)" in message


def test_custom_node_without_function_or_plugin_is_refused(exported, tmp_path):
    path = edited(exported("demo", "custom")[0], tmp_path / "bare.onnx", lambda m: m.functions.__delitem__(slice(None)))
    with pytest.raises(SparsifinerError, match="unsupported node sparsifiner::TopKMaskedAttention"):
        build(path, tmp_path, use_plugin=False)


def test_timing_cache_and_sm90_are_refused_without_a_gpu(exported, tmp_path):
    needs_rtx()
    if trt_loader.gpu_visible():
        pytest.skip("checks the CPU-only refusals")
    path = exported("demo", "dense", batch=3)[0]
    with pytest.raises(SparsifinerError, match="--timing-cache needs a GPU"):
        build(path, tmp_path, timing_cache=str(tmp_path / "cache.bin"))
    with pytest.raises(SparsifinerError, match="TensorRT-RTX cannot build for sm90"):
        build(path, tmp_path, compute_capability="sm90")
    with pytest.raises(SparsifinerError, match="no GPU is visible: pass --compute-capability"):
        build(path, tmp_path, compute_capability=None)
    with pytest.raises(SparsifinerError, match="unknown compute capability 'sm1'"):
        build(path, tmp_path, compute_capability="sm1")
    assert not list(tmp_path.iterdir())


def test_rtx_library_link(tmp_path, monkeypatch):
    needs_rtx()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = trt_loader.ensure_rtx_library_link()
    libdir = trt_loader.rtx_library_dir()
    link = folder / trt_loader.RTX_LIBRARY
    assert link.exists() and link.resolve() == (libdir / f"{trt_loader.RTX_LIBRARY}.1").resolve() or folder == libdir
    assert trt_loader.ensure_rtx_library_link() == folder  # idempotent
    env = trt_loader.loader_env({"LD_LIBRARY_PATH": "/opt/x"})
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == [str(folder), "/opt/x"]


def test_sidecar_is_json_beside_the_engine(exported, tmp_path):
    sidecar = build(exported("demo", "dense", batch=3)[0], tmp_path)
    on_disk = json.loads(sidecar_path(sidecar["engine"]["path"]).read_text())
    assert on_disk == sidecar and on_disk["format"] == "sparsifiner-engine/1"
    assert {"inputs", "outputs", "profile", "backend", "plugin", "onnx", "build_seconds", "layers"} <= set(on_disk)
