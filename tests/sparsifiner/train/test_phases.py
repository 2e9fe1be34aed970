"""The recipe does what the paper says on the demo digits (tiny ViT, a few epochs each)."""
from __future__ import annotations

import json

import torch

from sparsifiner.model.io import load_sparsifiner


def test_teacher_learns_the_digits(teacher_run):
    _, teacher = teacher_run
    assert teacher["top1"] >= 75.0, teacher


def test_phase1_lowers_the_distillation_loss(phase_runs):
    out, _ = phase_runs
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    phase1 = [r for r in records if r["phase"] == "phase1" and r.get("kind") == "epoch"]
    assert [r["epoch"] for r in phase1] == [0, 1, 2]
    before, after = phase1[0]["val_attn_loss"], phase1[-1]["val_attn_loss"]
    assert after < 0.8 * before, (before, after)
    # a better low-rank fit of the attention keeps more of its mass in the predicted mask
    assert phase1[-1]["val_recall"] > phase1[0]["val_recall"]
    # the backbone is frozen and dense: accuracy is exactly the teacher's
    teacher = [r for r in records if r["phase"] == "teacher" and r.get("kind") == "epoch"][-1]
    assert phase1[-1]["val_top1"] == teacher["val_top1"]


def test_pruning_gives_the_sparsity_it_reports(phase_runs):
    out, summary = phase_runs
    reported = summary["phase1"]["basis_sparsity"]
    assert json.loads((out / "phase1.json").read_text())["basis_sparsity"] == reported
    model = load_sparsifiner(out / "phase1.safetensors")
    zeros, total = 0, 0
    for block in model.blocks:
        pred = block.attn.predictor
        assert bool(pred.basis_is_pruned)
        basis = pred.pruned_basis
        assert torch.equal(basis == 0, pred.w_up.abs() <= 0.01)  # tau_basis of the demo recipe, on |w|
        zeros, total = zeros + int((basis == 0).sum()), total + basis.numel()
    assert abs(zeros / total - reported) < 1e-6
    # phase 2 keeps the pruned basis (predictor frozen) and evaluation measures the same share
    assert abs(summary["phase2"]["basis_sparsity"] - reported) < 1e-6


def test_phase2_keeps_accuracy(teacher_run, phase_runs):
    _, teacher = teacher_run
    _, summary = phase_runs
    phase2 = summary["phase2"]
    assert phase2["mode"] == "sparse" and phase2["budget"] == 16
    assert phase2["top1"] >= teacher["top1"] - 3.0, (teacher["top1"], phase2["top1"])
    assert 0.0 < phase2["recall"] <= phase2["oracle_recall"] + 1e-6 <= 1.0 + 1e-6
