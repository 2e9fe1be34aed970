"""Recipes, settings, the schedule and the losses."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

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


# The defaults of the authors' src/main.py (lim142857/Sparsifiner) that their run script does not override,
# and the released config (experiments/sparsifiner_default_config.yaml).
AUTHORS = {
    "aa": "rand-m9-mstd0.5-inc1", "color_jitter": 0.4, "train_interpolation": "bicubic",
    "reprob": 0.25, "remode": "pixel", "recount": 1,
    "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch",
    "smoothing": 0.1, "model_ema": True, "model_ema_decay": 0.9999, "model_ema_eval": True,
    "drop_path": 0.0, "clip_grad": None, "weight_decay": 0.05, "input_size": 224,
}
RELEASED = {"phase2_epochs": 45, "basis_threshold": 0.02, "coef_topk": 8}


def test_deit_small_recipe_trains_with_the_authors_defaults(tmp_path):
    import numpy as np
    from PIL import Image
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from torchvision.transforms import ColorJitter, InterpolationMode

    from sparsifiner.data import build_datasets
    from sparsifiner.train.models import build_dense

    s = build_train_settings(load_recipe("deit_small"))
    a, e = s.augmentation, s.ema
    ours = {
        "aa": a.auto_augment, "color_jitter": a.color_jitter, "train_interpolation": a.train_interpolation,
        "reprob": a.re_prob, "remode": a.re_mode, "recount": a.re_count,
        "mixup": a.mixup_alpha, "cutmix": a.cutmix_alpha, "mixup_prob": a.mixup_prob,
        "mixup_switch_prob": a.mixup_switch_prob, "mixup_mode": a.mixup_mode,
        "smoothing": s.phase2.label_smoothing, "model_ema": s.phase2.ema, "model_ema_decay": e.decay,
        "model_ema_eval": e.evaluate, "clip_grad": s.phase2.grad_clip, "weight_decay": s.phase2.weight_decay,
    }
    # one mixing setup for every phase that trains on labels or images, as the authors' single mixup_fn
    assert s.phase1.mixup and s.phase2.mixup and s.teacher.mixup
    assert s.phase1.grad_clip is None and s.phase1.weight_decay == 0.05 and s.teacher.label_smoothing == 0.1
    assert s.augment and not s.phase1.ema  # phase 1: no EMA, the recipe's documented departure

    # the model and the ImageFolder transform the run builds from it (random weights: no download here)
    model = build_dense(s.replace(pretrained=False), 2)
    ours["input_size"] = model.patch_embed.img_size[0]
    rates = [getattr(m, "drop_prob", 0.0) for b in model.blocks for m in (b.drop_path1, b.drop_path2)]
    ours["drop_path"] = max(rates)
    assert {k: ours[k] for k in AUTHORS} == AUTHORS
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / split / name / "0.png")
    train, _ = build_datasets(str(tmp_path), model, transform=a.transform_kwargs())
    steps = {type(t): t for t in train.transform.transforms}
    assert steps[RandomResizedCropAndInterpolation].interpolation == InterpolationMode.BICUBIC
    assert steps[RandomErasing].probability == 0.25 and steps[RandomErasing].mode == "pixel"
    assert {op.magnitude for op in steps[RandAugment].ops} == {9}
    assert ColorJitter not in steps  # timm drops the jitter while RandAugment is on (so did the authors' timm 0.3.2)

    # the recipe's comment table names every authors' argument it compares
    text = (Path(__file__).parents[3] / "recipes" / "deit_small.yaml").read_text()
    for arg in ("--aa", "--color_jitter", "--train_interpolation", "--reprob", "--mixup", "--cutmix",
                "--mixup_switch_prob", "--mixup_mode", "--smoothing", "--model_ema", "--model_ema_eval",
                "--drop_path", "--clip_grad", "SoftTargetCrossEntropy"):
        assert arg in text, arg


def test_released_variant_extends_deit_small():
    base, released = (build_train_settings(load_recipe(n)) for n in ("deit_small", "deit_small_released"))
    sp = released.sparsifiner
    assert {"phase2_epochs": released.phase2.epochs, "basis_threshold": sp.basis_threshold,
            "coef_topk": sp.coef_topk if sp.coef_prune == "topk" else None} == RELEASED
    changed = base.replace(phase2=dataclasses.replace(base.phase2, epochs=45),
                           sparsifiner=base.sparsifiner.replace(basis_threshold=0.02, coef_prune="topk", coef_topk=8))
    assert released == changed  # everything else, the training setup included, is deit_small's


def test_recipe_extends_merges_sections_and_refuses_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("model: demo\nphase1:\n  lr: 1.0e-3\n  epochs: 3\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nphase1:\n  epochs: 4\nseed: 5\n")
    data = load_recipe(str(tmp_path / "child.yaml"))
    assert data == {"model": "demo", "phase1": {"lr": 1e-3, "epochs": 4}, "seed": 5}
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(SparsifinerError, match="extends itself"):
        load_recipe(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("extends: [a, b]\n")
    with pytest.raises(SparsifinerError, match="extends takes one recipe"):
        load_recipe(str(tmp_path / "c.yaml"))
