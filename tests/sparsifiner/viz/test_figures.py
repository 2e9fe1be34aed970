"""The figures are written as PNGs, with the blocks and heads clamped to the model's."""
from __future__ import annotations

import json

from click.testing import CliRunner
from PIL import Image

from sparsifiner.cli import cli
from sparsifiner.model.io import save_sparsifiner
from sparsifiner.model.sparsify import prune_basis
from sparsifiner.model.zoo import create_demo_sparsifiner
from sparsifiner.viz import clamp_blocks, curves_figure, default_budgets


def test_clamps_and_defaults():
    assert clamp_blocks(None, 6) == [3, 4, 5]
    assert clamp_blocks(None, 2) == [0, 1]
    assert clamp_blocks([1, 9], 4) == [1]
    assert default_budgets(49) == [49, 20]


def _png_ok(path):
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_visualize_command_writes_all_figures(tmp_path):
    model = create_demo_sparsifiner()
    prune_basis(model)
    ckpt = save_sparsifiner(model, tmp_path / "m.safetensors")
    records = [{"phase": p, "epoch": e, "kind": "epoch", "step": 5 * e, "train_loss": 1.0 / (e + 1), "val_top1": 50 + e,
                "val_recall": 0.5, "val_oracle_recall": 0.7, "val_attn_loss": 2.0 / (e + 1)}
               for p in ("teacher", "phase1", "phase2") for e in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = CliRunner().invoke(cli, ["visualize", "--checkpoint", str(ckpt), "--output", str(tmp_path / "fig"),
                                      "--query", "3,4", "--heads", "4", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [p.split("/")[-1] for p in out["attention"]] == ["attention_b16.png", "attention_b7.png"]
    for path in out["attention"] + [out["basis"], out["curves"]]:
        _png_ok(path)


def test_visualize_errors_are_one_line(tmp_path):
    model = create_demo_sparsifiner()
    ckpt = save_sparsifiner(model, tmp_path / "m.safetensors")
    result = CliRunner().invoke(cli, ["visualize", "--checkpoint", str(ckpt), "--output", str(tmp_path / "f"),
                                      "--query", "9,9"])
    assert result.exit_code == 2 and "outside the 8x8 patch grid" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_curves_figure(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"phase": "teacher", "epoch": 1, "kind": "epoch", "step": 3,
                                                  "train_loss": 1.0, "val_top1": 40.0}) + "\n")
    _png_ok(curves_figure(tmp_path / "m.jsonl", tmp_path / "c.png"))
