"""The training commands end to end through click (tiny model, a few images, one epoch a phase)."""
from __future__ import annotations

import json

from click.testing import CliRunner

from sparsifiner.cli import cli

TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "32",
        "--set", "timm_kwargs={patch_size: 4, embed_dim: 64, depth: 2, num_heads: 1}",
        "--limit", "64", "--epochs", "1", "--batch-size", "16", "--set", "eval_batch_size=64",
        "--no-progress", "--threads", "1"]


def invoke(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_demo_command_reports_the_table_and_json(tmp_path):
    out = tmp_path / "demo"
    table = invoke(["demo", "--output", str(out), *TINY]).stdout
    for label in ("teacher (dense) top-1", "Sparsifiner top-1", "basis sparsity", "coefficient sparsity",
                  "attention-mass recall", "MHSA MACs reduction", "paper, DeiT-S: 90.8 %"):
        assert label in table, table
    summary = json.loads((out / "demo_summary.json").read_text())
    for key in ("teacher_top1", "sparsifiner_top1", "basis_sparsity", "coef_sparsity", "recall", "oracle_recall",
                "mhsa_reduction", "wall_s"):
        assert isinstance(summary[key], float), key
    assert summary["keep_rate"] == 0.25 and summary["budget"] == 16
    assert 0 < summary["mhsa_reduction"] < 1
    for name in ("teacher", "phase1", "phase2"):
        assert (out / f"{name}.safetensors").exists() and (out / f"{name}.json").exists()
    for fig in summary["figures"]["attention"] + [summary["figures"]["basis"], summary["figures"]["curves"]]:
        assert fig.endswith(".png")
    # --resume on a finished demo retrains nothing and prints the same numbers
    again = json.loads(invoke(["demo", "--output", str(out), "--resume", "--no-figures", "--json", *TINY]).stdout)
    assert again["sparsifiner_top1"] == summary["sparsifiner_top1"]
    # the demo ends by exporting the phase-2 model and validating it in ONNX Runtime
    assert (out / "sparsifiner.onnx").is_file() and "ONNX Runtime (extensions) vs PyTorch" in table
    assert again["onnx"]["passed"] and set(again["onnx"]["validation"]) == {"function", "extensions"}


def test_evaluate_command(phase_runs):
    out, _ = phase_runs
    paths = [str(out / f"{p}.safetensors") for p in ("teacher", "phase1", "phase2")]
    args = ["evaluate", "--threads", "1"] + sum((["--checkpoint", p] for p in paths), [])
    table = invoke(args).stdout
    assert "teacher.safetensors" in table and "phase2.safetensors" in table and "recall" in table
    rows = json.loads(invoke(args + ["--json", "--budget", "8"]).stdout)
    assert [r["kind"] for r in rows] == ["dense", "sparsifiner", "sparsifiner"]
    assert "recall" not in rows[0] and rows[2]["budget"] == 8
    assert 0 < rows[2]["recall"] <= rows[2]["oracle_recall"] <= 1
    assert abs(rows[2]["mask_density"] - (65 + 64 * 8) / 65 ** 2) < 1e-9


def test_reg_study_command(tmp_path):
    out = tmp_path / "study"
    table = invoke(["reg-study", "--output", str(out), "--l1-weight", "0.01", *TINY]).stdout
    assert "L2" in table and "L1" in table
    result = json.loads((out / "reg_study.json").read_text())
    assert set(result["runs"]) == {"l2", "l1"}
    for reg in ("l2", "l1"):
        assert (out / f"basis_{reg}.png").exists()
        assert 0 <= result["runs"][reg]["basis_sparsity"] <= 1
    assert json.loads((out / "l1" / "phase1.json").read_text())["train_settings"]["phase1"]["reg"] == "l1"
