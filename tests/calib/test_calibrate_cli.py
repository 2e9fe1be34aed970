"""``sparsifiner calibrate`` on the command line: one-line errors that leave nothing behind, image
folders with the graph's preprocessing, --json that stays parseable."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from sparsifiner.calib import CalibrateSettings
from sparsifiner.calib.data import calibration_data
from sparsifiner.cli import cli
from sparsifiner.errors import SparsifinerError


@pytest.fixture()
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, ["calibrate", *map(str, args)])

    return invoke


def image_folder(root, classes=("a", "b"), per_class=6, split=True):
    from PIL import Image

    rng = np.random.default_rng(0)
    for part in (("train", "val") if split else ("",)):
        for name in classes:
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def no_metadata_graph(path):
    node = onnx.helper.make_node("MatMul", ["input", "w"], ["logits"])
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("input", 1, [1, 4])],
                                   [onnx.helper.make_tensor_value_info("logits", 1, [1, 2])],
                                   [onnx.numpy_helper.from_array(np.ones((4, 2), np.float32), "w")])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)]), str(path))
    return path


@pytest.mark.parametrize("case,fragment", [
    ("missing-folder", "data folder not found"),
    ("empty-folder", "no images"),
    ("too-few", "too few samples: --samples 20"),
    ("below-minimum", "--samples must be at least 8"),
    ("mode", "--mode must be one of int8, fp8; got 'int4'"),
    ("method", "--method must be one of"),
    ("fp8-minmax", "--mode fp8 calibrates with --method distribution"),
    ("no-metadata", "has no Sparsifiner metadata"),
    ("missing-onnx", "ONNX file not found"),
])
def test_bad_input_is_one_line(run, demo_export, tmp_path, case, fragment):
    src = demo_export("custom", 18)
    out = tmp_path / "out.onnx"
    args = {
        "missing-folder": [src, "--data", tmp_path / "nowhere"],
        "empty-folder": [src, "--data", (tmp_path / "empty").mkdir() or tmp_path / "empty"],
        "too-few": [src, "--data", image_folder(tmp_path / "imgs"), "--samples", 20],
        "below-minimum": [src, "--samples", 4],
        "mode": [src, "--mode", "int4"],
        "method": [src, "--method", "mse"],
        "fp8-minmax": [src, "--mode", "fp8", "--method", "minmax"],
        "no-metadata": [no_metadata_graph(tmp_path / "plain.onnx")],
        "missing-onnx": [tmp_path / "absent.onnx"],
    }[case]
    result = run(*args, "-o", out)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.output
    assert not out.exists() and not out.with_name("out.onnx.json").exists()
    assert not list(tmp_path.glob(".out.onnx*"))


def test_folder_data_uses_the_graph_preprocessing(tmp_path):
    root = image_folder(tmp_path / "imgs", per_class=6)
    pre = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear",
           "crop_pct": 1.0, "crop_mode": "center"}
    data = calibration_data(str(root), pre, samples=8, batch=3, fixed_batch=False)
    batches = list(data.calibration)
    assert [b["input"].shape for b in batches] == [(3, 3, 32, 32)] * 2 + [(2, 3, 32, 32)]
    assert data.calibration.count == 8 and data.report.count == 12 and data.classes == 2
    assert list(data.labels) == [0] * 6 + [1] * 6 and not data.same_images
    # (x - 0.5) / 0.25 of pixels in [0, 1]
    assert -2.01 <= batches[0]["input"].min() < -1.5 and 1.5 < batches[0]["input"].max() <= 2.01
    flat = calibration_data(str(image_folder(tmp_path / "flat", split=False)), pre, 8, 4, fixed_batch=True)
    assert flat.same_images and flat.classes == 2 and [b["input"].shape[0] for b in flat.report] == [4, 4, 4]


def test_folder_calibration_json_output(run, demo_export, tmp_path):
    root = image_folder(tmp_path / "imgs", per_class=5)
    out = tmp_path / "model.int8.onnx"
    result = run(demo_export("custom", 18), "--data", root, "--samples", 8, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)  # ONNX Runtime's quantisation prints nothing on stdout
    report = summary["report"]
    assert report["images"] == 10 and report["accuracy"] is None  # 2 folder classes, 10 model outputs
    assert "2 classes" in report["accuracy_note"] and out.is_file()


def test_settings_reject_writing_over_the_input(tmp_path):
    with pytest.raises(SparsifinerError, match="another file"):
        CalibrateSettings(str(tmp_path / "m.onnx"), str(tmp_path / "m.onnx"))


def test_a_quantised_graph_is_not_calibrated_again(run, calibrated, tmp_path):
    path, _ = calibrated("custom", "int8")
    result = run(path, "-o", tmp_path / "again.onnx")
    assert result.exit_code == 2 and "is already quantised: calibrate the float export" in result.output
