"""Save and load Sparsifiner models: safetensors weights with the settings inside.

A checkpoint is one ``.safetensors`` file whose header metadata carries the JSON
description (format, version, timm architecture, settings, mode), plus the same
JSON written beside it (``.json``) for people. Loading never unpickles anything.
Writes are atomic: a temporary file in the same folder, then ``os.replace``.

A checkpoint can also be a folder in timm's hub layout (``save_hub``): ``model.safetensors``
(the same file, description in its header) and ``config.json`` (architecture, num_classes,
model_args, pretrained_cfg, and the description under "sparsifiner"). Every reader here
accepts the folder wherever it accepts the file, so every loader built on them does too;
``timm.create_model("sparsifiner_...", pretrained=True, pretrained_cfg_overlay=dict(file=folder))``
and ``timm.create_model("local-dir:" + folder, pretrained=True)`` load it through timm.
"""
from __future__ import annotations

import json
import os
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
HUB_WEIGHTS = "model.safetensors"
HUB_CONFIG = "config.json"


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


def checkpoint_file(path: Union[str, Path]) -> Path:
    """The weights file of a checkpoint: ``path`` itself, or ``path/model.safetensors`` for a folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / HUB_WEIGHTS).is_file():
            raise SparsifinerError(f"{path} is a folder without {HUB_WEIGHTS}: pass a checkpoint file or a folder "
                                   "written by sparsifiner.save_hub")
        return path / HUB_WEIGHTS
    return path


def read_header(path: Union[str, Path]) -> dict:
    """The string metadata in a .safetensors file's header (or a hub folder's), with one-line errors."""
    from safetensors import safe_open

    path = checkpoint_file(path)
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
    plain state dict; no weights are read. ``path``: a file or a hub folder."""
    path = checkpoint_file(path)
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
    """Rebuild the model a checkpoint (file or hub folder) describes and load its weights (eval mode)."""
    path = checkpoint_file(path)
    info = read_description(path)
    arch = info["arch"]
    model = create_sparsifiner(
        arch["model"], SparsifinerSettings.from_dict(info["settings"], saved=True), img_size=tuple(arch["img_size"]),
        num_classes=arch["num_classes"], mode=mode or info.get("mode", "sparse"), **arch.get("timm_kwargs", {}),
    )
    load_state(model, read_weights(path, map_location), str(path))
    return model.to(map_location).eval()


def read_weights(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> dict:
    """The tensors of a checkpoint (file or hub folder), with a one-line error when unreadable."""
    from safetensors.torch import load_file

    path = checkpoint_file(path)
    try:
        return load_file(str(path), device=str(map_location))
    except Exception as exc:
        raise SparsifinerError(f"{path}: the weights are unreadable (corrupt or truncated): re-create it") from exc


def load_state(model: nn.Module, state: dict, source: str, allow_missing: tuple = ()) -> None:
    """load_state_dict(strict) with a one-line error naming the first mismatches.

    ``allow_missing`` names keys the caller dropped on purpose (a new classifier); they
    keep the model's own initialisation.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and k not in allow_missing]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise SparsifinerError(f"{source} does not match the model architecture: {', '.join(parts)}")
    model.load_state_dict(state, strict=not allow_missing)


def is_sparsifiner_checkpoint(path: Union[str, Path]) -> bool:
    """True for a Sparsifiner checkpoint file or hub folder; False for other weights (a dense
    timm checkpoint, a .pth); a missing path raises."""
    path = Path(path)
    if not path.exists():
        raise SparsifinerError(f"checkpoint not found: {path}")
    try:
        read_description(path)
    except SparsifinerError:
        return False
    return True


def read_hub_config(path: Union[str, Path]) -> dict:
    """The config.json of a hub folder (``path`` or the folder of its model.safetensors); {} if none."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent if path.name == HUB_WEIGHTS else None
    if folder is None or not (folder / HUB_CONFIG).is_file():
        return {}
    try:
        return json.loads((folder / HUB_CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SparsifinerError(f"{folder / HUB_CONFIG} is not readable JSON: re-create the folder with "
                               "sparsifiner.save_hub") from exc


# Weight locations in a pretrained cfg: they point at the source of other weights, not at these.
_CFG_SOURCES = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source")


def hub_config(model: nn.Module, info: dict, pretrained_cfg: Optional[dict] = None) -> dict:
    """timm's config.json for the model: architecture, classes, model_args, pretrained_cfg,
    and the Sparsifiner description under "sparsifiner"."""
    arch = info["arch"]
    variant = f"sparsifiner_{arch['model']}"
    source_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg = {k: v for k, v in source_cfg.items() if k not in _CFG_SOURCES and v is not None}
    if cfg.get("num_classes") != model.num_classes:
        for key in ("label_names", "label_descriptions", "label_offset"):
            cfg.pop(key, None)
    channels = model.patch_embed.proj.in_channels
    cfg.update(architecture=variant, num_classes=model.num_classes, input_size=[channels, *arch["img_size"]],
               fixed_input_size=True, custom_load=False)
    cfg.pop("tag", None)
    cfg.update(pretrained_cfg or {})
    model_args = {"img_size": arch["img_size"], "num_classes": model.num_classes, **arch.get("timm_kwargs", {}),
                  **info["settings"], "mode": info["mode"]}
    return {"architecture": variant, "num_classes": model.num_classes, "num_features": model.num_features,
            "global_pool": getattr(model, "global_pool", None), "model_args": model_args, "pretrained_cfg": cfg,
            METADATA_KEY: info}


def save_hub(model: nn.Module, folder: Union[str, Path], pretrained_cfg: Optional[dict] = None,
             extra: Optional[dict] = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` (timm's hub layout).

    ``pretrained_cfg`` overrides entries of the saved data config (mean, std, crop_pct, ...).
    The folder is created if its parent exists; each file is written atomically, and a
    folder this call created is removed again when writing fails.
    """
    import shutil

    from safetensors.torch import save_file

    folder = Path(folder)
    info = describe(model, extra)
    try:
        config_text = json.dumps(hub_config(model, info, pretrained_cfg), indent=2) + "\n"
    except (TypeError, ValueError) as exc:
        raise SparsifinerError(f"the model's timm arguments or pretrained_cfg are not JSON ({exc}): "
                               "pass JSON-serialisable values") from exc
    if folder.exists() and not folder.is_dir():
        raise SparsifinerError(f"{folder} exists and is not a folder: choose another output folder")
    if not folder.parent.is_dir():
        raise SparsifinerError(f"output folder {folder.parent} does not exist: create it first")
    if not os.access(folder if folder.exists() else folder.parent, os.W_OK):
        raise SparsifinerError(f"cannot write to {folder}: choose a writable output folder")
    created = not folder.exists()
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    try:
        folder.mkdir(exist_ok=True)
        atomic_write(folder / HUB_WEIGHTS,
                     lambda tmp: save_file(state, tmp, metadata={METADATA_KEY: json.dumps(info)}))
        atomic_write(folder / HUB_CONFIG, lambda tmp: Path(tmp).write_text(config_text))
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def save_dense(model: nn.Module, path: Union[str, Path], extra: Optional[dict] = None) -> Path:
    """Write a dense timm model (the teacher) as safetensors + JSON description."""
    from safetensors.torch import save_file

    path = Path(path)
    info = {"format": DENSE_FORMAT, "arch": arch_of(model), **(extra or {})}
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={METADATA_KEY: json.dumps(info)}))
    write_json(path.with_suffix(".json"), info)
    return path
