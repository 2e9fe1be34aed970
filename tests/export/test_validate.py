"""validate_onnx, its input loaders and the backend-agnostic comparator."""
import numpy as np
import onnx
import pytest
from PIL import Image

from sparsifiner.artifacts import read_metadata
from sparsifiner.data.feeds import ImageFolderInputs
from sparsifiner.errors import SparsifinerError
from sparsifiner.export import ExportSettings, ModelSource, export_onnx
from sparsifiner.model import prune_basis
from sparsifiner.model.io import save_sparsifiner
from sparsifiner.model.zoo import create_demo_sparsifiner
from sparsifiner.runtime.compare import compare_arrays, compare_outputs
from sparsifiner.runtime.ort import create_session, with_outputs
from sparsifiner.runtime.validate import (
    ValidateSettings,
    source_for_validation,
    validate_onnx,
)


@pytest.mark.parametrize("ort_op", ["function", "extensions"])
def test_validate_custom_graph(exported, ort_op):
    path, _ = exported("demo", "custom")
    report = validate_onnx(ValidateSettings(onnx_path=str(path), ort_op=ort_op, batch=3, num_batches=2))
    assert report["passed"] and report["samples"] == 6 and report["attention"] == "custom"
    out = report["outputs"][0]
    assert out["name"] == "logits" and out["top1"] == 1.0 and out["mismatches"] == 0
    assert set(out["quantiles"]) == {"p50", "p90", "p99", "max"} and out["max_abs"] < 1e-4
    assert report["extensions_op_calls"] == (12 if ort_op == "extensions" else 0)  # 6 blocks x 2 batches


def test_validate_fixed_batch_needs_that_batch(exported):
    path, _ = exported("demo", "dense", batch=3)
    assert validate_onnx(ValidateSettings(onnx_path=str(path)))["batch"] == 3
    with pytest.raises(SparsifinerError, match="fixed batch of 3"):
        validate_onnx(ValidateSettings(onnx_path=str(path), batch=2))


def test_validate_image_folder(exported, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40 + i, 37, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    path, _ = exported("demo", "decomposed")
    report = validate_onnx(ValidateSettings(onnx_path=str(path), inputs=str(tmp_path), batch=2))
    assert report["passed"] and report["samples"] == 6  # 5 images, the last batch filled cyclically
    assert "5 images" in report["inputs"]
    feed = next(iter(ImageFolderInputs(tmp_path, {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
                                                  "interpolation": "bicubic", "crop_pct": 0.9}, 2)))
    assert feed["input"].shape == (2, 3, 32, 32) and feed["input"].dtype == np.float32


def test_validate_empty_image_folder(exported, tmp_path):
    with pytest.raises(SparsifinerError, match="no images"):
        validate_onnx(ValidateSettings(onnx_path=str(exported("demo", "dense")[0]), inputs=str(tmp_path)))


def test_validate_fails_outside_tolerance(exported):
    path, _ = exported("demo", "dense")
    report = validate_onnx(ValidateSettings(onnx_path=str(path), atol=0.0, rtol=0.0))
    assert not report["passed"] and report["outputs"][0]["mismatches"] > 0


def test_validate_catches_other_weights(exported):
    path, _ = exported("demo", "custom")
    source = source_for_validation(path, model_name="demo", seed=1)
    assert source.seed == 1
    report = validate_onnx(ValidateSettings(onnx_path=str(path), source=source))
    assert not report["passed"] and report["outputs"][0]["max_abs"] > 1e-2


def test_source_for_validation_keeps_the_exports_recipe(exported):
    path, _ = exported("deit", "custom")
    assert source_for_validation(path) is None
    same = source_for_validation(path, model_name="deit_tiny_patch16_224")
    assert same.timm_kwargs == {"depth": 2} and same.seed == 0
    other = source_for_validation(path, model_name="deit_small_patch16_224", settings={"keep_rate": 0.5})
    assert other.timm_kwargs == {} and other.settings.keep_rate == 0.5
    with pytest.raises(SparsifinerError, match="need --model"):
        source_for_validation(path, seed=3)


def test_export_and_validate_from_checkpoint(tmp_path):
    model = create_demo_sparsifiner()
    prune_basis(model)
    ckpt = save_sparsifiner(model, tmp_path / "trained.safetensors")
    out = tmp_path / "trained.onnx"
    summary = export_onnx(ExportSettings(source=ModelSource(checkpoint=str(ckpt)), attention="decomposed"), out)
    assert summary["trained"] is True and summary["source"] == "checkpoint"
    report = validate_onnx(ValidateSettings(onnx_path=str(out)))  # the checkpoint path comes from the metadata
    assert report["passed"] and report["source"] == "checkpoint" and report["trained"] is True


def test_validate_missing_or_foreign_file(tmp_path):
    with pytest.raises(SparsifinerError, match="not found"):
        validate_onnx(ValidateSettings(onnx_path=str(tmp_path / "nope.onnx")))
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(SparsifinerError):
        validate_onnx(ValidateSettings(onnx_path=str(tmp_path / "junk.onnx")))


def test_comparator_statistics():
    ref = np.array([[1.0, 2.0, 0.0], [3.0, -1.0, 0.5]], np.float32)
    cand = ref + np.array([[0.0, 1e-5, 0.0], [-2e-5, 0.0, 0.0]], np.float32)
    result = compare_arrays("y", ref, cand, atol=1e-4, rtol=0)
    assert result.passed and result.top1 == 1.0 and result.mismatches == 0
    assert result.max_abs == pytest.approx(2e-5, rel=1e-2) and result.max_rel == pytest.approx(2e-5 / 3, rel=1e-2)
    assert compare_arrays("y", ref, cand, atol=1e-6, rtol=0).mismatches == 2
    flipped = cand.copy()
    flipped[0] = [3.0, 2.0, 0.0]
    assert compare_arrays("y", ref, flipped, atol=1e-4, rtol=0).top1 == 0.5


def test_comparator_rejects_nan_and_shape_changes():
    ref = np.ones((2, 3), np.float32)
    bad = ref.copy()
    bad[1, 1] = np.nan
    assert not compare_arrays("y", ref, bad, atol=1.0, rtol=1.0).passed
    with pytest.raises(ValueError, match="shapes differ"):
        compare_arrays("y", ref, ref[:1], atol=1, rtol=1)
    with pytest.raises(ValueError, match="lacks outputs"):
        compare_outputs({"y": ref}, {"z": ref}, 1, 1)


def test_validate_demo_digits(exported):
    pytest.importorskip("sparsifiner.data", reason="the demo digits live in sparsifiner.data")
    pytest.importorskip("sklearn", reason="the demo digits come from scikit-learn")
    path, _ = exported("demo", "custom")
    report = validate_onnx(ValidateSettings(onnx_path=str(path), inputs="demo", batch=5, num_batches=2))
    assert report["passed"] and report["samples"] == 10 and "demo digits" in report["inputs"]


def test_keep_best_coefficient_exports_and_validates(tmp_path):
    """coef_keep_best (a predictor setting) is part of the exported graph: ONNX Runtime keeps
    each row's best coefficient too, so every row has a learned key besides the fill."""
    from sparsifiner.settings import SparsifinerSettings

    source = ModelSource(model_name="demo", settings=SparsifinerSettings(coef_keep_best=True))
    out = tmp_path / "keep_best.onnx"
    export_onnx(ExportSettings(source=source, attention="custom"), out)
    report = validate_onnx(ValidateSettings(onnx_path=str(out), batch=3, num_batches=2))
    assert report["passed"] and report["outputs"][0]["max_abs"] < 1e-4
    assert report["selection"]["rows"] == 2 * 6 * 2 * 3 * 64 and report["selection"]["rows_differing"] == 0

    names = read_metadata(out)["sparsifiner"]["op_inputs"]["coef"]
    assert len(names) == 6
    session = create_session(with_outputs(onnx.load(str(out)), names))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    for coef in session.run(names, {"input": x}):  # random weights: without keep-best every row is empty
        assert coef.shape == (2, 2, 64, 32) and bool(((coef > 0).sum(-1) == 1).all())
