"""Training checkpoints without pickle: tensors in safetensors, everything else JSON.

A phase's resumable state (``<phase>.state.safetensors``, rewritten atomically after
every epoch) holds the model's state dict (``model.*``), the EMA model's when the phase
keeps one (``ema.*``), the optimiser's tensors (``optim.<param index>.<name>``) and the
RNG states as tensors; the header metadata
holds one JSON document: format, phase, epoch, optimiser step, the optimiser's param
groups and non-tensor state, the grad scaler, the learning-rate schedule position,
the Python/NumPy RNG scalars and the TrainSettings. A copy of that JSON sits beside
the file for people. Only ``os.replace`` publishes a file, so a kill leaves the
previous epoch's state intact.

Model weights (the dense teacher, Sparsifiner models) are saved by sparsifiner.model.io.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from sparsifiner.artifacts import atomic_write, write_json
from sparsifiner.errors import SparsifinerError

STATE_FORMAT = "sparsifiner-train-state"
STATE_KEY = "sparsifiner_train"


def rng_state() -> tuple[dict, dict]:
    """(tensors, JSON) capturing the torch, CUDA, NumPy and Python generators."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    return tensors, {"numpy": [name, int(pos), int(has_gauss), float(cached)],
                     "python": [version, list(internal), gauss]}


def set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict,
                     scaler: Optional[torch.amp.GradScaler] = None, ema: Optional[nn.Module] = None) -> None:
    """Atomically write a phase's resumable state (see the module docstring)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous().clone() for k, v in ema.state_dict().items()})
    opt = optimizer.state_dict()
    opt_scalars: dict = {}
    for index, state in opt["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                opt_scalars.setdefault(str(index), {})[name] = value
    rng_tensors, rng_meta = rng_state()
    tensors.update(rng_tensors)
    info = {"format": STATE_FORMAT, **meta,
            "optimizer": {"param_groups": opt["param_groups"], "scalars": opt_scalars},
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "rng": rng_meta}
    text = json.dumps(info)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={STATE_KEY: text}))
    write_json(path.with_suffix(".json"), {k: v for k, v in info.items() if k != "rng"})


def read_train_state(path: Path) -> tuple[dict, dict]:
    """(tensors, JSON meta) of a state file, with one-line errors for damaged files."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[STATE_KEY])
        tensors = load_file(str(path))
    except Exception:
        raise SparsifinerError(f"{path} is not a readable training state (corrupt or truncated): "
                               "delete it to restart the phase") from None
    if meta.get("format") != STATE_FORMAT:
        raise SparsifinerError(f"{path} is not a Sparsifiner training state")
    return tensors, meta


def restore_train_state(tensors: dict, meta: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: Optional[torch.amp.GradScaler] = None, source: str = "state",
                        ema: Optional[nn.Module] = None) -> None:
    """Load model, EMA model, optimiser, scaler and RNG from a state read by read_train_state."""
    from sparsifiner.model.io import load_state

    device = next(model.parameters()).device
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, source)
    if ema is not None:
        saved = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        if not saved:
            raise SparsifinerError(f"{source} holds no EMA weights but this run keeps an EMA: "
                                   "restart the phase without --resume")
        load_state(ema, saved, source)
    groups = meta["optimizer"]["param_groups"]
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value.to(device) if name != "step" else value
    for index, scalars in meta["optimizer"]["scalars"].items():
        state.setdefault(int(index), {}).update(scalars)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise SparsifinerError(f"{source}: the optimiser state does not match this run ({exc}); "
                               "restart the phase without --resume") from None
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    set_rng_state(tensors, meta["rng"])
