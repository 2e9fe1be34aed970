"""Save and load Sparsifiner models: safetensors weights with the settings inside.

A checkpoint is one ``.safetensors`` file whose header metadata carries the JSON
description (format, version, timm architecture, settings, mode), plus the same
JSON written beside it (``.json``) for people. Loading never unpickles anything.
Writes are atomic: a temporary file in the same folder, then ``os.replace``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from sparsifiner import __version__
from sparsifiner.artifacts import atomic_write, write_json
from sparsifiner.errors import SparsifinerError
from sparsifiner.model.sparsify import arch_of, create_sparsifiner, settings_of, sparse_layers
from sparsifiner.settings import SparsifinerSettings

FORMAT = "sparsifiner-model"
DENSE_FORMAT = "sparsifiner-dense"
METADATA_KEY = "sparsifiner"


def describe(model: nn.Module, extra: Optional[dict] = None) -> dict:
    """The JSON description of a Sparsifiner model that its checkpoint carries."""
    return {
        "format": FORMAT,
        "version": __version__,
        "arch": arch_of(model),
        "settings": settings_of(model).to_dict(),
        "mode": sparse_layers(model)[0].mode,
        **(extra or {}),
    }


def save_sparsifiner(model: nn.Module, path: Union[str, Path], extra: Optional[dict] = None) -> Path:
    """Write ``path`` (.safetensors) and ``path.json``; returns the checkpoint path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    info = describe(model, extra)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={METADATA_KEY: json.dumps(info)}))
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2) + "\n"))
    return path


def read_header(path: Union[str, Path]) -> dict:
    """The string metadata in a .safetensors file's header, with one-line errors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SparsifinerError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise SparsifinerError(f"{path} is not a readable .safetensors file (corrupt, truncated or another "
                               "format): pass a safetensors checkpoint") from exc


def read_info(path: Union[str, Path]) -> Optional[dict]:
    """The JSON description in a weights file's header (dense or Sparsifiner), None for a
    plain state dict; no weights are read."""
    meta = read_header(path)
    if METADATA_KEY not in meta:
        return None
    try:
        return json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise SparsifinerError(f"{path} has corrupt Sparsifiner metadata: re-create it") from exc


def read_description(path: Union[str, Path]) -> dict:
    """The JSON description stored in a Sparsifiner checkpoint's header (no weights are read)."""
    info = read_info(path)
    if info is None:
        raise SparsifinerError(f"{path} is not a Sparsifiner checkpoint (no '{METADATA_KEY}' metadata): "
                               "save it with sparsifiner.save_sparsifiner")
    if info.get("format") != FORMAT:
        raise SparsifinerError(f"{path} has format {info.get('format')!r}, expected {FORMAT!r}")
    return info


def load_sparsifiner(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu",
                     mode: Optional[str] = None) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    from safetensors.torch import load_file

    info = read_description(path)
    arch = info["arch"]
    model = create_sparsifiner(
        arch["model"], SparsifinerSettings.from_dict(info["settings"]), img_size=tuple(arch["img_size"]),
        num_classes=arch["num_classes"], mode=mode or info.get("mode", "sparse"), **arch.get("timm_kwargs", {}),
    )
    try:
        state = load_file(str(path), device=str(map_location))
    except Exception as exc:
        raise SparsifinerError(f"{path}: the weights are unreadable (corrupt or truncated): re-create it") from exc
    load_state(model, state, str(path))
    return model.to(map_location).eval()


def load_state(model: nn.Module, state: dict, source: str) -> None:
    """load_state_dict(strict) with a one-line error naming the first mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise SparsifinerError(f"{source} does not match the model architecture: {', '.join(parts)}")
    model.load_state_dict(state, strict=True)


def save_dense(model: nn.Module, path: Union[str, Path], extra: Optional[dict] = None) -> Path:
    """Write a dense timm model (the teacher) as safetensors + JSON description."""
    from safetensors.torch import save_file

    path = Path(path)
    info = {"format": DENSE_FORMAT, "arch": arch_of(model), **(extra or {})}
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={METADATA_KEY: json.dumps(info)}))
    write_json(path.with_suffix(".json"), info)
    return path


def read_weights(path: Union[str, Path]) -> tuple[Optional[dict], dict]:
    """(description or None for a plain state dict, tensors) of a .safetensors weights file."""
    from safetensors.torch import load_file

    path = Path(path)
    info = read_info(path)
    try:
        tensors = load_file(str(path))
    except Exception:
        raise SparsifinerError(f"{path} is not a readable .safetensors file (corrupt, truncated or another "
                               "format): pass a safetensors checkpoint") from None
    return info, tensors
