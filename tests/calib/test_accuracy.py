"""int8 calibration keeps top-1 within a point of float on the 360 val digits (the issue's criterion).

A tiny digits ViT (patch 8: 17 tokens, 2 blocks, width 64) is trained briefly (teacher and phase 1, ~30 s on
2 CPU cores; the pattern of tests/export/test_selection_agreement.py), its basis pruned and
exported with the custom op; the random-weights tests cover the mechanics, this one the
accuracy. The fully trained demo's numbers are in the calibration report of the closing note.
"""
import pytest
import torch

from sparsifiner.calib import CalibrateSettings, calibrate

pytestmark = pytest.mark.slow


def tiny_recipe():
    from sparsifiner.train.recipe import build_train_settings, load_recipe

    recipe = load_recipe("demo")
    recipe.update({"model": "vit_tiny_patch16_224", "img_size": 32, "batch_size": 32, "augment": False,
                   "timm_kwargs": {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}})
    recipe["teacher"] = {**recipe["teacher"], "epochs": 12, "lr": 3e-3, "warmup_epochs": 0.5}
    recipe["phase1"] = {**recipe["phase1"], "epochs": 1, "warmup_epochs": 0}
    return build_train_settings(recipe, {"sparsifiner.coef_prune": "topk", "sparsifiner.n_down": 8})


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory):
    from sparsifiner.export import ExportSettings, ModelSource, export_onnx
    from sparsifiner.model.io import save_sparsifiner
    from sparsifiner.model.source import load_checkpoint
    from sparsifiner.model.sparsify import prune_basis, set_mode
    from sparsifiner.train.runner import artifact_path, run_training

    out = tmp_path_factory.mktemp("trained")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_training(tiny_recipe(), "teacher", out, progress=False)
        run_training(tiny_recipe().replace(checkpoint=str(artifact_path(out, "teacher"))), "1", out, progress=False)
    finally:
        torch.set_num_threads(threads)
    model, _ = load_checkpoint(artifact_path(out, "phase1"))
    prune_basis(model)
    set_mode(model, "sparse")
    save_sparsifiner(model, out / "pruned.safetensors")
    path = out / "tiny.onnx"
    export_onnx(ExportSettings(source=ModelSource(checkpoint=str(out / "pruned.safetensors")), opset=19), path)
    return path


def test_int8_top1_within_one_point_of_float(trained_export, tmp_path):
    summary = calibrate(CalibrateSettings(str(trained_export), str(tmp_path / "tiny.int8.onnx"), data="demo",
                                          mode="int8", samples=128))
    report = summary["report"]
    acc = report["accuracy"]
    assert report["images"] == 360 and report["held_out"]
    assert acc["float"] > 0.7, "the briefly trained model must have learned the digits for the check to mean anything"
    assert abs(acc["quantized"] - acc["float"]) <= 0.01, acc
    assert report["top1_agreement"] >= 0.97
