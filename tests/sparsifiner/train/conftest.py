"""Shared fixtures of the training tests: a tiny ViT (2 blocks, width 64, one head of 64) on the digits.

The tiny model keeps N = 65 tokens like the demo but costs about a tenth of it, so a
teacher good enough to measure accuracy trains in seconds. One teacher and one
phase-1 run are shared by the whole session.
"""
from __future__ import annotations

import pytest
import torch

TINY = {"model": "vit_tiny_patch16_224", "img_size": 32,
        "timm_kwargs": {"patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 1}}


def tiny_settings(**changes):
    from sparsifiner.train.recipe import build_train_settings, load_recipe

    recipe = load_recipe("demo")
    recipe.update(TINY)
    recipe["batch_size"] = 32
    recipe["eval_batch_size"] = 360
    recipe["teacher"] = {**recipe["teacher"], "epochs": 12, "lr": 2e-3, "warmup_epochs": 1}
    recipe["phase1"] = {**recipe["phase1"], "epochs": 2}
    recipe["phase2"] = {**recipe["phase2"], "epochs": 2, "lr": 1e-4, "warmup_epochs": 0}
    return build_train_settings(recipe, changes)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # Two OpenMP threads on a shared two-core machine run several times slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory):
    """(output folder, summary) of the tiny teacher trained on all digits (12 epochs)."""
    from sparsifiner.train.runner import run_training

    out = tmp_path_factory.mktemp("teacher")
    summary = run_training(tiny_settings(), "teacher", out, progress=False)
    return out, summary["teacher"]


@pytest.fixture(scope="session")
def phase_runs(teacher_run):
    """(output folder, summary) of phases 1 and 2 from the tiny teacher."""
    from sparsifiner.train.runner import run_training

    out, _ = teacher_run
    summary = run_training(tiny_settings(), "both", out, progress=False)
    return out, summary


@pytest.fixture(scope="session")
def tiny():
    """The factory of tiny-model TrainSettings (keyword overrides use dotted keys)."""
    return tiny_settings
