"""Op version 2 (tile-shared selection): the ONNX node and local function select the reference's
keys bit for bit, and a tile model exports and validates in ONNX Runtime.

Selected keys are read out of each implementation by probing (q = k = 0, one-hot v;
sparsifiner.runtime.selection.probe_selection), on inputs on the exact-score grids with
many exact ties, so any difference is a rule violation, not rounding.
"""
import numpy as np
import onnx
import pytest
import torch

from sparsifiner import op_spec
from sparsifiner.export import onnx_op
from sparsifiner.op_spec import Selection
from sparsifiner.ops import quantize_basis, round_coefficients, select_mask
from sparsifiner.runtime.ort import EXTENSIONS_OP_CALLS, create_session
from sparsifiner.runtime.selection import probe_selection


def grid_inputs(gh, gw, rank=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    rows = gh * gw
    n = rows + 1
    coef = torch.softmax(3 * torch.randn(2, 2, rows, rank, generator=g), -1)
    coef = round_coefficients(torch.where(coef > 0.1, coef, torch.zeros_like(coef)))
    coef[:, :, :3] = 0
    basis = torch.rand(rank, n, generator=g) * (torch.rand(rank, n, generator=g) > 0.6)
    basis[:, n // 2: n // 2 + 4] = basis[:, 1:5]
    return coef.to(dtype), quantize_basis(basis).to(dtype)


def ort_run(model, backend):
    session = create_session(model, backend)

    def run(q, k, v, coef, basis):
        feed = {"q": q, "k": k, "v": v, "coef": coef, "basis": basis}
        return session.run(None, {name: np.ascontiguousarray(t.numpy()) for name, t in feed.items()})[0]

    return run


def v2_model(shape, rank, budget, selection, dtype=onnx.TensorProto.FLOAT):
    model = onnx_op.single_node_model(shape, rank, budget, 1.0, 1, dtype, dtype, selection=selection)
    assert {i.domain: i.version for i in model.opset_import}[op_spec.OP_DOMAIN] == op_spec.OP_VERSION_TILE
    return model


@pytest.mark.parametrize("backend", ["function", "extensions"])
@pytest.mark.parametrize("mode,gh,gw,grid_cols,tile,budget,c", [
    ("tile", 8, 8, 0, (4, 4), 16, 24),         # demo grid, square inferred
    ("two_level", 8, 8, 8, (2, 2), 16, 32),
    ("tile", 14, 14, 14, (8, 8), 49, 196),     # DeiT-S: partial edge tiles; C = 4B
    ("two_level", 6, 10, 10, (4, 3), 5, 5),    # non-square grid, C = B
])
def test_function_selects_the_reference_keys(backend, mode, gh, gw, grid_cols, tile, budget, c):
    coef, basis = grid_inputs(gh, gw, seed=gh + gw)
    sel = Selection(mode, grid_cols, *tile, c)
    n = gh * gw + 1
    keys = c if mode == "tile" else budget
    before = EXTENSIONS_OP_CALLS["count"]
    run = ort_run(v2_model((2, 2, n, 64), coef.shape[-1], budget, sel), backend)
    got = probe_selection(run, coef, basis, budget, 1, 64, torch.float32, keys_per_row=keys)
    assert torch.equal(got, select_mask(coef, basis, budget, sel))
    assert (EXTENSIONS_OP_CALLS["count"] > before) == (backend == "extensions")


def test_fp16_and_selection_zero_is_version_one():
    coef, basis = grid_inputs(8, 8, dtype=torch.float16)
    sel = Selection("tile", 8, 4, 4, 20)
    run = ort_run(v2_model((2, 2, 65, 64), 8, 16, sel, onnx.TensorProto.FLOAT16), "function")
    got = probe_selection(run, coef, basis, 16, 1, 64, torch.float16, keys_per_row=20)
    assert torch.equal(got, select_mask(coef.float(), basis.float(), 16, sel))
    model = v2_model((2, 2, 65, 64), 8, 16, sel, onnx.TensorProto.FLOAT16)
    for attr in model.graph.node[0].attribute:
        if attr.name == op_spec.ATTR_SELECTION:
            attr.i = 0  # a version-2 node with selection 0: every row its own top-B
    got = probe_selection(ort_run(model, "function"), coef, basis, 16, 1, 64, torch.float16)
    assert torch.equal(got, select_mask(coef.float(), basis.float(), 16))


def test_tile_model_exports_and_validates(tmp_path):
    from sparsifiner.artifacts import read_metadata
    from sparsifiner.export import ExportSettings, ModelSource, export_onnx
    from sparsifiner.runtime.validate import ValidateSettings, validate_onnx
    from sparsifiner.settings import SparsifinerSettings

    # top-k coefficient pruning keeps every row's scores nonzero in a random model
    settings = SparsifinerSettings(selection="tile", tile_rows=4, tile_cols=4, tile_budget=24, coef_prune="topk")
    path = tmp_path / "tile.onnx"
    summary = export_onnx(ExportSettings(source=ModelSource(model_name="demo", settings=settings)), path)
    assert (summary["op_version"], summary["selection"], summary["custom_nodes"]) == (2, "tile", 6)
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.domain == op_spec.OP_DOMAIN)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs[op_spec.ATTR_SELECTION] == 1 and attrs[op_spec.ATTR_TILE_BUDGET] == 24
    assert attrs[op_spec.ATTR_GRID_COLS] == 8 and attrs[op_spec.ATTR_TILE_ROWS] == 4
    assert op_spec.ATTR_PLUGIN_VERSION not in attrs  # no plugin implements version 2 yet
    assert read_metadata(path)["sparsifiner"]["op"].endswith("@2")
    report = validate_onnx(ValidateSettings(onnx_path=str(path), inputs="random", batch=2, num_batches=1))
    assert report["passed"], report
    assert report["selection"]["rows"] == 2 * 2 * 64 * 6


@pytest.mark.trt
def test_tile_export_builds_from_its_local_function(tmp_path):
    """No plugin implements version 2: the engine build never tags its nodes for the version-1
    plugin, and TensorRT-RTX builds them from the local function (ahead of time, no GPU)."""
    from sparsifiner.export import ExportSettings, ModelSource, export_onnx
    from sparsifiner.runtime import trt_loader
    from sparsifiner.runtime.engine_build import EngineBuildSettings, build_engine_file
    from sparsifiner.settings import SparsifinerSettings

    if not trt_loader.tensorrt_available() or not trt_loader.is_rtx(trt_loader.import_tensorrt()):
        pytest.skip("needs TensorRT-RTX (pip install 'sparsifiner[rtx]') for an ahead-of-time build")
    settings = SparsifinerSettings(selection="two_level", tile_rows=4, tile_cols=4, tile_budget=32)
    path = tmp_path / "two_level.onnx"
    export_onnx(ExportSettings(source=ModelSource(model_name="demo", settings=settings)), path)
    sidecar = build_engine_file(EngineBuildSettings(str(path), str(tmp_path / "e.engine"), compute_capability="sm86"))
    assert sidecar["plugin"] is None and sidecar["layers"]["plugin"] == [] and sidecar["retagged_nodes"] == 0
    assert not any(layer["type"] == "custom_layer" for layer in sidecar["layers"]["engine"])
