"""The authors' (DeiT) training pipeline on an ImageFolder: RandAugment, erasing, Mixup/CutMix, soft targets, EMA.

A few steps of each phase of the tiny ViT on generated images, with the deit_small
recipe's augmentation section, checking that every piece is active where it should be.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from sparsifiner.errors import SparsifinerError
from sparsifiner.train import losses, runner
from sparsifiner.train.recipe import load_recipe
from sparsifiner.train.runner import run_training

CLASSES = ("red", "green", "blue", "grey")


def make_images(root, per_class=8, size=(40, 48)):
    """Noise with a bright square whose colour is the class; 8 train and 4 val images per class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", per_class // 2)):
        for index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 80, (*size, 3), dtype=np.uint8)
                y, x = rng.integers(0, 16, 2)
                image[y:y + 24, x:x + 24] = [255 * (index == c) or 160 * (index == 3) for c in range(3)]
                Image.fromarray(image).save(folder / f"{i}.png")
    return root


def _settings(tiny, data, **changes):
    deit = load_recipe("deit_small")
    overrides = {"data": str(data), "batch_size": 8, "eval_batch_size": 16, "teacher.epochs": 1, "phase1.epochs": 1,
                 "phase2.epochs": 1, "teacher.warmup_epochs": 0, "phase1.warmup_epochs": 0}
    overrides.update({f"augmentation.{k}": v for k, v in deit["augmentation"].items()})
    overrides.update({f"ema.{k}": v for k, v in deit["ema"].items()})
    for phase in ("teacher", "phase1", "phase2"):
        overrides.update({f"{phase}.{k}": deit[phase][k] for k in ("mixup", "ema", "label_smoothing")
                          if k in deit[phase]})
    overrides.update(changes)
    return tiny(**overrides)


def test_image_folder_training_runs_the_deit_pipeline(tmp_path, monkeypatch, tiny):
    import timm.layers
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from torchvision.transforms import InterpolationMode

    import sparsifiner.data

    data = make_images(tmp_path / "data")
    settings = _settings(tiny, data)
    assert settings.teacher.mixup and settings.phase1.mixup and settings.phase2.mixup
    assert settings.teacher.ema and not settings.phase1.ema and settings.phase2.ema

    # spies: the training set the run builds, the targets each classification loss sees,
    # and the images every patch embedding receives (teacher and student alike)
    built, targets, embedded = [], {"teacher": [], "phase2": []}, []
    real_build = sparsifiner.data.build_datasets

    def build_datasets(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    def spy(phase, real):
        def loss(logits, target, *args):
            targets[phase].append(target.detach().clone())
            return real(logits, target, *args)
        return loss

    monkeypatch.setattr(sparsifiner.data, "build_datasets", build_datasets)
    monkeypatch.setattr(runner, "classification_loss", spy("teacher", runner.classification_loss))
    monkeypatch.setattr(losses, "classification_loss", spy("phase2", losses.classification_loss))

    def record(module, args):
        if isinstance(module, timm.layers.PatchEmbed):
            embedded.append((id(module), torch.is_grad_enabled(), args[0].detach().clone()))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        out = tmp_path / "run"
        summary = run_training(settings, "teacher", out, progress=False)
        run_training(settings, "1", out, progress=False)
        embedded.clear()
        summary.update(run_training(settings, "2", out, progress=False))
    finally:
        handle.remove()

    # 1. the ImageFolder training transform is DeiT's: bicubic crop, RandAugment m9 (increasing ops), erasing 0.25 pixel
    train = built[0][0]
    steps = {type(t): t for t in train.transform.transforms}
    assert steps[RandomResizedCropAndInterpolation].interpolation == InterpolationMode.BICUBIC
    ra = steps[RandAugment]
    assert ra.num_layers == 2 and {op.magnitude for op in ra.ops} == {9} and {op.magnitude_std for op in ra.ops} == {0.5}
    assert any(op.name.endswith("Increasing") for op in ra.ops)
    erase = steps[RandomErasing]
    assert (erase.probability, erase.mode, erase.max_count) == (0.25, "pixel", 1)

    # 2. mixed targets are soft: rows are distributions over the 4 classes with the 0.1 smoothing inside,
    #    and some rows hold two classes (mixup or cutmix of images of different classes)
    for phase in ("teacher", "phase2"):
        assert len(targets[phase]) == 4, phase  # 32 images / batch 8
        stacked = torch.cat(targets[phase])
        assert stacked.shape == (32, len(CLASSES))
        assert torch.allclose(stacked.sum(-1), torch.ones(32))
        assert float(stacked.min()) >= 0.1 / len(CLASSES) - 1e-6
        assert int(((stacked > 0.1 / len(CLASSES) + 1e-4).sum(-1) >= 2).sum()) > 0

    # 3. in phase 2 the frozen teacher (no grad) embeds exactly the (mixed) images the student then embeds
    training = [i for i, (_, grad, _) in enumerate(embedded) if grad]
    assert len(training) == 4
    for i in training:
        (t_id, t_grad, t_images), (s_id, _, s_images) = embedded[i - 1], embedded[i]
        assert t_id != s_id and not t_grad and torch.equal(t_images, s_images)

    # 4. EMA: written beside the raw weights, evaluated every epoch, close to the start at decay 0.9999,
    #    equal to the raw weights where nothing trains (the frozen predictor)
    for phase in ("teacher", "phase2"):
        assert (out / f"{phase}.ema.safetensors").is_file() and summary[phase]["ema_path"].endswith(f"{phase}.ema.safetensors")
        assert "ema_top1" in summary[phase]
        epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert any(r["phase"] == phase and "val_ema_top1" in r for r in epochs)
    assert not (out / "phase1.ema.safetensors").exists()
    start = load_file(str(out / "phase1.safetensors"))
    raw = load_file(str(out / "phase2.safetensors"))
    ema = load_file(str(out / "phase2.ema.safetensors"))
    assert raw.keys() == ema.keys()
    moved = [k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], start[k])]
    assert moved and all(".attn.predictor." not in k for k in moved)
    for key in raw:
        if ".attn.predictor." in key:
            assert torch.equal(ema[key], raw[key]), key
    for key in moved:
        assert not torch.equal(ema[key], raw[key]), key
    # after 4 steps at decay 0.9999 the EMA is start + 1e-4 * sum_i 0.9999^(4-i) (w_i - start): it has moved
    # between 1 and 4 ten-thousandths of the way the raw weights did (loose bounds: the path need not be straight;
    # per tensor the move can round away in fp32, e.g. for norm weights near 1)
    ema_move = torch.cat([(ema[k] - start[k]).flatten() for k in moved]).norm()
    raw_move = torch.cat([(raw[k] - start[k]).flatten() for k in moved]).norm()
    assert 0.5e-4 < float(ema_move / raw_move) < 1e-3, float(ema_move / raw_move)

    # 5. evaluate picks the EMA or the raw weights
    from sparsifiner.cli import cli

    rows = {}
    for weights in ("raw", "ema"):
        result = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(out / "phase2.safetensors"), "--data",
                                          str(data), "--weights", weights, "--json", "--threads", "1"])
        assert result.exit_code == 0, result.output
        rows[weights] = json.loads(result.stdout)[0]
    assert rows["raw"]["name"] == "phase2.safetensors" and rows["ema"]["name"] == "phase2.ema.safetensors"
    assert rows["ema"]["top1"] == pytest.approx(summary["phase2"]["ema_top1"])
    result = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(out / "phase1.safetensors"), "--data", str(data),
                                      "--weights", "ema"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "no EMA weights" in result.stderr


def test_mixup_needs_even_micro_batches_and_phase1_keeps_no_ema(tmp_path, tiny):
    data = make_images(tmp_path / "data", per_class=2)
    with pytest.raises(SparsifinerError, match="even number of images per process"):
        run_training(_settings(tiny, data, batch_size=6, accum_steps=2), "teacher", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SparsifinerError, match="phase1.ema is not supported"):
        _settings(tiny, data, **{"phase1.ema": True})
    with pytest.raises(SparsifinerError, match="mixup_alpha and cutmix_alpha are both 0"):
        _settings(tiny, data, **{"augmentation.mixup_alpha": 0, "augmentation.cutmix_alpha": 0})
    with pytest.raises(SparsifinerError, match="not a timm augmentation policy"):
        _settings(tiny, data, **{"augmentation.auto_augment": "rand-q9"})
    with pytest.raises(SparsifinerError, match="re_prob is a probability"):
        _settings(tiny, data, **{"augmentation.re_prob": 1.5})
    with pytest.raises(SparsifinerError, match="ema.decay must be in"):
        _settings(tiny, data, **{"ema.decay": 1.0})
