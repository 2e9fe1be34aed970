"""`sparsifiner export` and `sparsifiner validate` through click's CliRunner."""
import json

import onnx
import pytest
from click.testing import CliRunner

from sparsifiner.cli import cli


@pytest.fixture()
def run():
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "demo.onnx"
    result = CliRunner().invoke(cli, ["export", "--onnx", str(out), "--model", "demo", "--keep-rate", "0.5",
                                      "--batch", "dynamic", "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output)


def test_export_json_summary(demo_export):
    out, summary = demo_export
    assert summary["path"] == str(out) and summary["attention"] == "custom" and summary["custom_nodes"] == 6
    assert summary["budget"] == 32 and summary["keep_rate"] == 0.5  # ceil(0.5 * 64 patches)
    assert summary["input"] == ["input", ["batch", 3, 32, 32], "fp32"]
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


@pytest.mark.parametrize("ort_op", ["function", "extensions"])
def test_validate_passes(run, demo_export, ort_op):
    result = run("validate", "--onnx", demo_export[0], "--ort-op", ort_op, "--batch", 3, "--num-batches", 1)
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and "max abs" in result.output and "top-1" in result.output


def test_validate_json(run, demo_export):
    result = run("validate", "--onnx", demo_export[0], "--json", "--num-batches", 1)
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["passed"] and report["atol"] == 1e-4 and report["rtol"] == 1e-3


def test_validate_exit_status_on_failure(run, demo_export):
    result = run("validate", "--onnx", demo_export[0], "--atol", 0, "--rtol", 0, "--num-batches", 1)
    assert result.exit_code == 1 and "FAILED" in result.output


def test_validate_against_other_weights_fails(run, demo_export):
    result = run("validate", "--onnx", demo_export[0], "--model", "demo", "--seed", 5, "--num-batches", 1)
    assert result.exit_code == 1 and "FAIL" in result.output


def test_export_human_summary(run, tmp_path):
    out = tmp_path / "dense.onnx"
    result = run("export", "--onnx", out, "--model", "demo", "--attention", "dense", "--batch", 2)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "dense teacher" in result.output and "random predictor" in result.output


@pytest.mark.parametrize("args,match", [
    (["--model", "demo", "--opset", "16"], "unsupported opset 16"),
    (["--checkpoint", "missing.safetensors"], "checkpoint not found"),
    (["--model", "demo", "--batch", "0"], "--batch"),
    ([], "exactly one of --checkpoint"),
    (["--checkpoint", "a.safetensors", "--keep-rate", "0.5"], "carries its own settings"),
])
def test_export_errors_are_one_line(run, tmp_path, args, match):
    out = tmp_path / "bad.onnx"
    result = run("export", "--onnx", out, *args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0]
    assert "Traceback" not in result.output and not out.exists()


def test_export_to_missing_folder(run, tmp_path):
    result = run("export", "--onnx", tmp_path / "nope" / "m.onnx", "--model", "demo")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_validate_missing_file(run, tmp_path):
    result = run("validate", "--onnx", tmp_path / "nope.onnx")
    assert result.exit_code == 2 and result.output.startswith("error: ONNX file not found")


def test_export_from_a_hub_folder(run, tmp_path):
    from sparsifiner.model import prune_basis
    from sparsifiner.model.io import save_hub
    from sparsifiner.model.zoo import create_demo_sparsifiner

    model = create_demo_sparsifiner()
    prune_basis(model)
    folder = save_hub(model, tmp_path / "hub")
    out = tmp_path / "hub.onnx"
    result = run("export", "--onnx", out, "--checkpoint", folder, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["source"] == "checkpoint" and out.is_file()
