"""A run killed inside an epoch and resumed ends with the uninterrupted run's weights, bit for bit
(the model EMA's too, with Mixup/CutMix drawing from the restored RNG)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sparsifiner.errors import SparsifinerError
from sparsifiner.train import loop
from sparsifiner.train.runner import run_training


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing in the trainer catches it."""


def _kill_after(monkeypatch, batches: int):
    real = loop._next_batch
    calls = {"n": 0}

    def next_batch(iterator):
        calls["n"] += 1
        if calls["n"] > batches:
            raise Killed()
        return real(iterator)

    monkeypatch.setattr(loop, "_next_batch", next_batch)


@pytest.mark.parametrize("variant", ["teacher", "2", "2-mixup-ema"])
def test_resume_after_an_interrupted_epoch_matches_the_uninterrupted_run(tmp_path, monkeypatch, tiny, phase_runs,
                                                                         variant):
    # 160 training images, batch 32: 5 steps per epoch; 3 epochs; killed in the middle of epoch 2.
    source = phase_runs[0] / "phase1.safetensors"
    deit = {"phase2.mixup": True, "phase2.ema": True, "phase2.label_smoothing": 0.1, "ema.decay": 0.9}
    settings = tiny(limit=160, **{"teacher.epochs": 3, "phase2.epochs": 3, "teacher.warmup_epochs": 1},
                    **(deit if variant == "2-mixup-ema" else {}))
    phase = variant.split("-")[0]
    if phase == "2":
        settings = settings.replace(checkpoint=str(source))
    name = "teacher" if phase == "teacher" else "phase2"

    run_training(settings, phase, tmp_path / "straight", progress=False)

    _kill_after(monkeypatch, 5 + 2)
    with pytest.raises(Killed):
        run_training(settings, phase, tmp_path / "killed", progress=False)
    monkeypatch.undo()
    state = json.loads((tmp_path / "killed" / f"{name}.state.json").read_text())
    assert state["epoch"] == 1 and state["step"] == 5
    assert not (tmp_path / "killed" / f"{name}.safetensors").exists()
    assert not list((tmp_path / "killed").glob(".*.tmp"))

    with pytest.raises(SparsifinerError, match="--resume"):
        run_training(settings, phase, tmp_path / "killed", progress=False)
    with pytest.raises(SparsifinerError, match="setting seed was 0, now 1"):
        run_training(settings.replace(seed=1), phase, tmp_path / "killed", resume=True, progress=False)
    stale = tmp_path / "killed" / f".{name}.state.safetensors.k1ll.tmp"  # a write cut short by the kill
    stale.write_bytes(b"half a checkpoint")
    run_training(settings, phase, tmp_path / "killed", resume=True, progress=False)
    assert not stale.exists()

    files = [f"{name}.safetensors"] + ([f"{name}.ema.safetensors"] if settings.phase2.ema else [])
    for file in files:
        a = load_file(str(tmp_path / "straight" / file))
        b = load_file(str(tmp_path / "killed" / file))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (file, key)
    if settings.phase2.ema:  # the state carried the EMA through the kill: it is not the raw model, nor a fresh copy
        state = load_file(str(tmp_path / "killed" / f"{name}.state.safetensors"))
        assert any(not torch.equal(state[f"ema.{k}"], state[f"model.{k}"]) for k in a)
    # the log has each epoch once: the interrupted epoch's partial records are gone
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("kind") == "epoch" and json.loads(line)["phase"] == name]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 3
    # resuming a finished run does nothing
    again = run_training(settings, phase, tmp_path / "killed", resume=True, progress=False)
    assert again[name]["skipped"] == "already complete"
