"""Recipes, settings, the schedule and the losses."""
from __future__ import annotations

import math

import pytest
import torch

from sparsifiner.errors import SparsifinerError
from sparsifiner.train.loop import lr_at
from sparsifiner.train.losses import attention_distillation, l1_basis_penalty, logit_distillation
from sparsifiner.train.recipe import build_train_settings, load_recipe, parse_assignment, recipe_names
from sparsifiner.train.settings import PhaseSettings, TrainSettings


def test_bundled_recipes_load():
    assert {"demo", "deit_small"} <= set(recipe_names())
    for name in recipe_names():
        assert isinstance(build_train_settings(load_recipe(name)), TrainSettings)


def test_deit_small_recipe_is_the_papers():
    s = build_train_settings(load_recipe("deit_small"))
    assert s.model == "deit_small_patch16_224" and s.pretrained
    sp = s.sparsifiner
    assert (sp.keep_rate, sp.basis_threshold, sp.coef_prune, sp.coef_threshold, sp.n_down) == (0.25, 0.01, "threshold", 0.05, 32)
    assert sp.resolve_budget(197) == 49
    p1, p2 = s.phase1, s.phase2
    assert (p1.epochs, p1.lr, p1.min_lr, p1.warmup_epochs, p1.weight_decay, p1.reg) == (5, 3e-4, 2e-4, 3, 0.05, "l2")
    assert (p1.attn_loss, p1.attn_reduction) == ("mse", "sum")
    assert (p2.epochs, p2.lr, p2.min_lr, p2.warmup_epochs, p2.weight_decay) == (40, 8e-5, 2e-6, 3, 0.05)
    assert (p2.ce_weight, p2.kl_weight, p2.token_weight) == (1.0, 0.5, 0.5)


def test_overrides_and_yaml_scalars(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: demo\nphase1:\n  lr: 3e-4\n  epochs: 2.0\nsparsifiner:\n  keep_rate: '0.5'\n")
    data = load_recipe(str(recipe))
    s = build_train_settings(data, dict([parse_assignment("phase2.kl_weight=1"), ("batch_size", 64)]))
    assert s.phase1.lr == 3e-4 and s.phase1.epochs == 2 and s.sparsifiner.keep_rate == 0.5
    assert s.phase2.kl_weight == 1.0 and s.batch_size == 64
    assert TrainSettings.from_dict(s.to_dict()) == s
    with pytest.raises(SparsifinerError, match="unknown training setting phase1.lrr"):
        build_train_settings(data, {"phase1.lrr": 1})
    with pytest.raises(SparsifinerError, match="reg must be one of"):
        PhaseSettings(reg="l3")
    with pytest.raises(SparsifinerError, match="KEY=VALUE"):
        parse_assignment("phase1.lr")


def test_cli_flags_override_the_recipe_for_the_phases_that_run():
    from sparsifiner.cli import build_train_settings_from_flags

    s = build_train_settings_from_flags("demo", ("phase1",), ["phase2.lr=1e-5"],
                                        {"epochs": 7, "lr": 0.01, "reg": "l1", "keep_rate": 0.5, "batch_size": 64})
    assert s.phase1.epochs == 7 and s.phase1.lr == 0.01 and s.phase1.reg == "l1"
    assert s.phase2.epochs == load_recipe("demo")["phase2"]["epochs"] and s.phase2.lr == 1e-5
    assert s.sparsifiner.keep_rate == 0.5 and s.batch_size == 64


def test_warmup_then_cosine():
    ps = PhaseSettings(lr=1e-3, min_lr=1e-5, warmup_epochs=1, warmup_lr=1e-6)
    total, per_epoch = 50, 10
    lrs = [lr_at(i, total, per_epoch, ps) for i in range(total)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[10] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_attention_distillation_reductions():
    torch.manual_seed(0)
    aux = []
    for _ in range(3):
        attn = torch.softmax(torch.randn(2, 2, 5, 5), -1)
        scores = torch.rand(2, 2, 4, 5, requires_grad=True)
        aux.append({"scores": scores, "attn": attn})
    total = attention_distillation(aux, "mse", "sum")
    mean = attention_distillation(aux, "mse", "mean")
    assert total.item() == pytest.approx(mean.item() * 2 * 2 * 4 * 5, rel=1e-5)
    expected = sum(((a["scores"] - a["attn"][:, :, 1:]) ** 2).sum() for a in aux) / 3
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    total.backward()
    assert aux[0]["scores"].grad is not None
    kl = attention_distillation(aux, "kl", "mean")
    assert math.isfinite(kl.item()) and kl.item() >= 0
    assert l1_basis_penalty([torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5]])]).item() == 3.5
    logits = torch.randn(4, 10)
    assert logit_distillation(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
