"""Sparsifiner variants of timm's ViTs in timm's own registry: ``sparsifiner_<timm name>``.

After ``import sparsifiner`` (see ``sparsifiner._timm_hook`` for how that reaches timm
without importing it) or ``import sparsifiner.model.timm_models``::

    timm.list_models("sparsifiner_*")
    timm.create_model("sparsifiner_deit_small_patch16_224", keep_rate=0.25, num_classes=10, img_size=384)
    timm.create_model("sparsifiner_deit_small_patch16_224", pretrained=True,
                      pretrained_cfg_overlay=dict(file="runs/deit_s_hub"))   # a save_hub folder
    timm.create_model("local-dir:runs/deit_s_hub", pretrained=True)              # timm's local folders

Keyword arguments: the fields of ``SparsifinerSettings`` (keep_rate, budget, n_down, ...),
``mode`` ("sparse" or "dense"), and everything timm's VisionTransformer takes
(num_classes, img_size, drop_path_rate, ...). ``pretrained=True`` loads, in this order:

* a Sparsifiner checkpoint named by the pretrained cfg's ``file`` (a ``save_hub``
  folder or a ``save_sparsifiner`` file): its settings, image size, classes and extra
  timm arguments are the defaults, keyword arguments override them. Another
  ``num_classes`` drops the classifier (timm's rule), another ``img_size`` resizes the
  loaded model (position embeddings and predictors, ``resize_sparsifiner``);
* any other file or state dict: timm's dense weights for the backbone, loaded by timm
  itself; the predictors start untrained (phase 1 trains them);
* nothing: the backbone's timm pretrained weights (network), untrained predictors.

The registered pretrained cfgs are the backbones' data configs without weight sources:
no trained Sparsifiner weights are published, so ``list_models(pretrained=True)`` holds
none of these names.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from sparsifiner.errors import SparsifinerError
from sparsifiner.settings import SparsifinerSettings

PREFIX = "sparsifiner_"
# The plain timm ViTs with one CLS token and global attention (sparsify accepts them; a test
# builds each on the meta device). Other supported ViTs: register_variant(name).
BASE_MODELS = (
    "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224", "deit_base_patch16_384",
    "deit3_small_patch16_224", "deit3_small_patch16_384", "deit3_medium_patch16_224",
    "deit3_base_patch16_224", "deit3_base_patch16_384", "deit3_large_patch16_224", "deit3_large_patch16_384",
    "vit_tiny_patch16_224", "vit_tiny_patch16_384", "vit_small_patch16_224", "vit_small_patch16_384",
    "vit_small_patch32_224", "vit_small_patch32_384", "vit_base_patch16_224", "vit_base_patch16_384",
    "vit_base_patch32_224", "vit_base_patch32_384", "vit_large_patch16_224", "vit_large_patch16_384",
)
SETTINGS_FIELDS = tuple(f.name for f in dataclasses.fields(SparsifinerSettings))
PAPER = "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers"
# Weight locations of the backbone's cfg; a Sparsifiner variant has none of its own.
_WEIGHT_SOURCES = dict(url=None, file=None, state_dict=None, hf_hub_id=None, hf_hub_filename=None, source=None)
_PREDICTOR_KEY = ".attn.predictor."

default_cfgs: dict = {}  # timm's register_model reads the module's default_cfgs


def variant_name(base: str) -> str:
    return PREFIX + base


def base_name(variant: str) -> str:
    if not variant.startswith(PREFIX):
        raise SparsifinerError(f"{variant!r} is not a Sparsifiner model name (they start with {PREFIX!r})")
    return variant[len(PREFIX):]


def _variant_cfg(base: str):
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(base)
    if cfg is None:
        raise SparsifinerError(f"timm has no model {base!r}")
    return dataclasses.replace(cfg, **_WEIGHT_SOURCES, architecture=None, tag=None, custom_load=False,
                               paper_name=PAPER, paper_ids="arXiv:2303.13755",
                               notes=(f"Sparsifiner of {base}; pretrained=True without a file loads {base}'s "
                                      "timm weights into the backbone, the predictors untrained",))


def _make_entrypoint(variant: str, base: str) -> Callable[..., Any]:
    def entrypoint(pretrained: bool = False, **kwargs):
        return create_variant(variant, base, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = variant
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{base} with Sparsifiner attention (see sparsifiner.model.timm_models)."
    return entrypoint


def register_variant(base: str) -> str:
    """Register ``sparsifiner_<base>`` with timm (idempotent); returns the variant's name."""
    from timm.models import generate_default_cfgs, is_model, register_model

    variant = variant_name(base)
    if is_model(variant):
        return variant
    if not is_model(base):
        raise SparsifinerError(f"timm has no model {base!r}; see timm.list_models('vit_*')")
    default_cfgs.update(generate_default_cfgs({variant: _variant_cfg(base)}))
    entrypoint = _make_entrypoint(variant, base)
    setattr(sys.modules[__name__], variant, entrypoint)
    register_model(entrypoint)
    return variant


def register_timm_models() -> list[str]:
    """Register every variant of BASE_MODELS (idempotent); returns their names."""
    return [register_variant(base) for base in BASE_MODELS]


def _split_kwargs(kwargs: dict) -> tuple[dict, Optional[str], dict]:
    """(Sparsifiner settings, mode, timm kwargs); drops timm's factory-only arguments."""
    for key in ("cache_dir", "pretrained_model_args"):
        kwargs.pop(key, None)
    settings = {k: kwargs.pop(k) for k in SETTINGS_FIELDS if k in kwargs}
    return settings, kwargs.pop("mode", None), kwargs


def _build(base: str, settings: SparsifinerSettings, mode: str, *, pretrained: bool = False,
           overlay: Optional[dict] = None, **timm_kwargs):
    from sparsifiner.model.sparsify import create_timm_model, sparsify

    if overlay is not None:
        timm_kwargs["pretrained_cfg_overlay"] = overlay
    model = sparsify(create_timm_model(base, pretrained=pretrained, **timm_kwargs), settings, mode=mode)
    timm_kwargs.pop("pretrained_cfg_overlay", None)
    timm_kwargs.pop("img_size", None)
    timm_kwargs.pop("num_classes", None)
    model.sparsifiner_arch = {"model": base, "img_size": list(model.patch_embed.img_size),
                              "num_classes": model.num_classes, "timm_kwargs": timm_kwargs}
    return model


def _from_checkpoint(base: str, source: Path, settings_kw: dict, mode: Optional[str], kwargs: dict):
    """A Sparsifiner checkpoint (file or hub folder), keyword arguments over its own."""
    from sparsifiner.model.io import load_state, read_description, read_weights
    from sparsifiner.model.resize import resize_sparsifiner

    info = read_description(source)
    arch = info["arch"]
    if arch["model"] != base:
        raise SparsifinerError(f"{source} holds a Sparsifiner of {arch['model']}, not {base}: "
                               f"create {variant_name(arch['model'])} instead")
    settings = SparsifinerSettings.from_dict({**info["settings"], **settings_kw})
    img_size = kwargs.pop("img_size", None)
    num_classes = kwargs.pop("num_classes", arch["num_classes"])
    timm_kwargs = {**arch.get("timm_kwargs", {}), **kwargs}
    model = _build(base, settings, mode or info.get("mode", "sparse"), img_size=tuple(arch["img_size"]),
                   num_classes=num_classes, **timm_kwargs)
    state = read_weights(source)
    dropped: tuple = ()
    if num_classes != arch["num_classes"]:  # timm's rule: another head size starts a new classifier
        classifier = model.pretrained_cfg.get("classifier") or "head"
        dropped = tuple(k for k in (f"{classifier}.weight", f"{classifier}.bias") if k in model.state_dict())
        state = {k: v for k, v in state.items() if k not in dropped}
    load_state(model, state, str(source), allow_missing=dropped)
    if img_size is not None:
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if size != tuple(model.patch_embed.img_size):
            resize_sparsifiner(model, size)
    return model.eval()


def _has_predictor(state: dict) -> bool:
    return any(_PREDICTOR_KEY in key for key in state)


def create_variant(variant: str, base: str, pretrained: bool = False, pretrained_cfg=None,
                   pretrained_cfg_overlay: Optional[dict] = None, **kwargs):
    """The model behind timm's ``sparsifiner_<base>`` entry point (see the module docstring)."""
    from timm.models._builder import resolve_pretrained_cfg

    from sparsifiner.model.io import is_sparsifiner_checkpoint, load_state, read_hub_config

    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg,
                                 pretrained_cfg_overlay=pretrained_cfg_overlay).to_dict()
    settings_kw, mode, kwargs = _split_kwargs(dict(kwargs))
    file, state = cfg.get("file"), cfg.get("state_dict")
    if pretrained and state is None and file and is_sparsifiner_checkpoint(file):
        model = _from_checkpoint(base, Path(file), settings_kw, mode, kwargs)
        # timm's rule: the pretrained cfg describes the weights loaded (the checkpoint's input size,
        # mean, std, classes), under the caller's overlay, even when num_classes or img_size differ.
        saved_cfg = read_hub_config(file).get("pretrained_cfg", {})
        keep = {k: tuple(v) if isinstance(v, list) else v for k, v in saved_cfg.items()
                if k in cfg and k not in _WEIGHT_SOURCES}
        cfg.update({**keep, **(pretrained_cfg_overlay or {}), "architecture": variant})
    else:
        settings = SparsifinerSettings(**settings_kw)
        if pretrained and state is not None and _has_predictor(state):
            model = _build(base, settings, mode or "sparse", **kwargs)
            load_state(model, dict(state), "the pretrained_cfg state_dict")
        elif pretrained and (file or state is not None):
            # timm loads other weights into the dense backbone with the caller's overlay (num_classes, ...).
            overlay = {k: v for k, v in (pretrained_cfg_overlay or {}).items() if k != "architecture"}
            overlay.update({"state_dict": state} if state is not None else {"file": str(file)})
            if state is None and Path(file).is_dir():
                overlay["source"] = "local-dir"  # a dense hub folder
            model = _build(base, settings, mode or "sparse", pretrained=True, overlay=overlay, **kwargs)
        else:
            model = _build(base, settings, mode or "sparse", pretrained=pretrained, **kwargs)
    model.pretrained_cfg = cfg
    model.default_cfg = model.pretrained_cfg  # timm's alias
    return model


register_timm_models()
