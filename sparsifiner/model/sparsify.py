"""Turn a timm VisionTransformer into a Sparsifiner model, and switch its modes.

``sparsify`` swaps every block's ``attn`` for a SparsifinerAttention that reuses the
block's own qkv and proj modules (weights untouched) and adds a predictor.
Supported: timm ``VisionTransformer`` with one CLS token and plain global attention
(deit_*, vit_*, any image size). Rejected with the reason: no CLS token, register
tokens, dynamic image size, or a block attention other than timm's ``Attention``
(RoPE, windowed, ...).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn

from sparsifiner.errors import SparsifinerError
from sparsifiner.layers import SparsifinerAttention
from sparsifiner.settings import SparsifinerSettings


def check_supported(model: nn.Module) -> None:
    """Raise SparsifinerError naming what makes ``model`` unsupported."""
    from timm.models.vision_transformer import Attention, VisionTransformer

    name = type(model).__name__
    if not isinstance(model, VisionTransformer):
        raise SparsifinerError(f"unsupported architecture {name}: only timm VisionTransformer models (deit_*, vit_*) are supported")
    if getattr(model, "cls_token", None) is None:
        raise SparsifinerError("unsupported model: it has no CLS token (class_token=False); Sparsifiner keeps the CLS row dense")
    if getattr(model, "num_reg_tokens", 0):
        raise SparsifinerError(f"unsupported model: it has {model.num_reg_tokens} register tokens; only a single CLS prefix token is supported")
    if getattr(model, "dynamic_img_size", False):
        raise SparsifinerError("unsupported model: dynamic_img_size=True; fix the image size and use resize_sparsifiner to change it")
    for i, block in enumerate(model.blocks):
        attn = getattr(block, "attn", None)
        if isinstance(attn, SparsifinerAttention):
            raise SparsifinerError("the model is already sparsified")
        if type(attn) is not Attention:
            raise SparsifinerError(
                f"unsupported attention {type(attn).__name__} in block {i}: only timm's global Attention is supported "
                "(no windowed or rotary attention)"
            )


def num_tokens_of(model: nn.Module) -> int:
    """N: patch tokens plus prefix (CLS) tokens at the model's current image size."""
    return model.patch_embed.num_patches + model.num_prefix_tokens


def sparsify(model: nn.Module, settings: Optional[SparsifinerSettings] = None, mode: str = "sparse") -> nn.Module:
    """Swap each block's attention for SparsifinerAttention, in place; returns the model."""
    settings = settings or SparsifinerSettings()
    check_supported(model)
    n = num_tokens_of(model)
    settings.check_tokens(n)
    for block in model.blocks:
        ref = block.attn.qkv.weight
        layer = SparsifinerAttention(block.attn, n, settings, model.num_prefix_tokens,
                                     tuple(model.patch_embed.grid_size))
        block.attn = layer.to(device=ref.device, dtype=ref.dtype)
    model.sparsifiner_settings = settings
    set_mode(model, mode)
    return model


def create_sparsifiner(
    model_name: str,
    settings: Optional[SparsifinerSettings] = None,
    *,
    pretrained: bool = False,
    img_size: Optional[int] = None,
    num_classes: Optional[int] = None,
    mode: str = "sparse",
    **timm_kwargs,
) -> nn.Module:
    """Create a timm model by name and sparsify it. Records the creation arguments."""
    model = create_timm_model(model_name, pretrained=pretrained, img_size=img_size, num_classes=num_classes,
                              **timm_kwargs)
    model = sparsify(model, settings, mode=mode)
    model.sparsifiner_arch = {"model": model_name, "img_size": list(model.patch_embed.img_size),
                              "num_classes": model.num_classes, "timm_kwargs": dict(timm_kwargs)}
    return model


def arch_of(model: nn.Module) -> dict:
    """How to rebuild the model: timm name, image size, classes and extra timm kwargs."""
    arch = dict(getattr(model, "sparsifiner_arch", None) or {})
    if not arch:
        name = getattr(model, "pretrained_cfg", {}).get("architecture")
        if not name:
            raise SparsifinerError("cannot tell which timm architecture this model is; build it with create_sparsifiner")
        arch = {"model": name, "timm_kwargs": {}}
    arch["img_size"] = list(model.patch_embed.img_size)
    arch["num_classes"] = model.num_classes
    return arch


def create_timm_model(model_name: str, *, pretrained: bool = False, img_size: Optional[int] = None,
                      num_classes: Optional[int] = None, **timm_kwargs) -> nn.Module:
    """timm.create_model with one-line errors for unknown names and unreachable weights."""
    import timm

    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise SparsifinerError(f"unknown model name {model_name!r}{hint}; see `timm.list_models('vit_*')`")
    kwargs = dict(timm_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained:  # a second or two without network, instead of timm's ~50 s of retries
        from sparsifiner.model.hub import check_pretrained_available

        check_pretrained_available(model_name, kwargs.get("pretrained_cfg_overlay"))
    try:
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ConnectionError) as exc:
        if pretrained:
            raise SparsifinerError(
                f"could not load pretrained weights for {model_name} ({type(exc).__name__}); "
                "check the network or pass local weights with --checkpoint"
            ) from exc
        raise


def sparse_layers(model: nn.Module) -> list[SparsifinerAttention]:
    layers = [m for m in model.modules() if isinstance(m, SparsifinerAttention)]
    if not layers:
        raise SparsifinerError("the model has no Sparsifiner attention: call sparsifiner.sparsify(model) first")
    return layers


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """"dense" (phase 1: predictor trains, attention dense) or "sparse" (masked attention)."""
    for layer in sparse_layers(model):
        layer.set_mode(mode)
    return model


def prune_basis(model: nn.Module) -> float:
    """Apply tau_basis to every block's W_up once; returns the mean basis sparsity."""
    sparsities = [layer.predictor.prune_basis_() for layer in sparse_layers(model)]
    return sum(sparsities) / len(sparsities)


def predictor_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    for layer in sparse_layers(model):
        yield from layer.predictor.parameters()


@contextlib.contextmanager
def collect_aux(model: nn.Module) -> Iterator[list]:
    """Within the block, each forward fills the yielded list with one aux dict per block.

    Aux dicts hold coef [B,H,N-c,R], basis [R,N], scores [B,H,N-c,N] (differentiable
    in phase 1), mask (bool, no grad), attn (dense probabilities [B,H,N,N]) and, in
    sparse mode, sparse_attn.
    """
    layers = sparse_layers(model)
    records: list = []
    hooks = [layer.register_forward_hook(lambda mod, inp, out: records.append(mod.aux)) for layer in layers]
    for layer in layers:
        layer.record_aux = True
    try:
        yield records
    finally:
        for layer in layers:
            layer.record_aux = False
            layer.aux = None
        for hook in hooks:
            hook.remove()


# Validation names each block's op coefficients like the exported graph does.
COEF_SUFFIX = ".predictor.coef"


def coefficient_names(model: nn.Module) -> list[str]:
    """``<block>.attn.predictor.coef`` for each Sparsifiner layer, in block order."""
    return [f"{name}{COEF_SUFFIX}" for name, m in model.named_modules() if isinstance(m, SparsifinerAttention)]


@contextlib.contextmanager
def capture_coefficients(model: nn.Module) -> Iterator[dict]:
    """Within the block, each sparse-mode forward fills the yielded dict with the pruned
    coefficients every block computed, keyed by ``coefficient_names`` (under
    ``inject_coefficients``: the ones it computed, not the injected ones it used)."""
    found: dict = {}
    hooks = []
    for name, layer in zip(coefficient_names(model), sparse_layers(model)):
        def hook(module, inputs, output, name=name):
            computed = module.computed_coef if module.coef_override is not None else output[0]
            found[name] = computed.detach()
        hooks.append(layer.predictor.register_forward_hook(hook))
    try:
        yield found
    finally:
        for h in hooks:
            h.remove()


@contextlib.contextmanager
def inject_coefficients(model: nn.Module, coefs: dict) -> Iterator[None]:
    """Within the block, sparse-mode blocks use the given coefficients ({name: [B, H, N-c, R]})
    instead of computing them: the reference then selects the keys those coefficients select."""
    layers = dict(zip(coefficient_names(model), sparse_layers(model)))
    unknown = sorted(set(coefs) - set(layers))
    if unknown:
        raise SparsifinerError(f"no Sparsifiner block for coefficients {unknown[:3]}")
    try:
        for name, coef in coefs.items():
            layers[name].predictor.coef_override = coef
        yield
    finally:
        for layer in layers.values():
            layer.predictor.coef_override = layer.predictor.computed_coef = None


def settings_of(model: nn.Module) -> SparsifinerSettings:
    settings = getattr(model, "sparsifiner_settings", None)
    if settings is None:
        raise SparsifinerError("the model has no Sparsifiner settings: call sparsifiner.sparsify(model) first")
    return settings


def budget_of(model: nn.Module) -> int:
    return sparse_layers(model)[0].budget


def set_budget(model: nn.Module, budget: Optional[int] = None, keep_rate: Optional[float] = None) -> int:
    """Give every block a new budget, explicit or from a keep rate (``budget`` wins when both
    are given), keeping the model's settings and its layers consistent; returns the budget."""
    if budget is None and keep_rate is None:
        raise SparsifinerError("set_budget needs a budget or a keep rate")
    current = settings_of(model)
    return apply_settings(model, current.replace(budget=budget, keep_rate=current.keep_rate if keep_rate is None
                                                 else keep_rate))


def apply_settings(model: nn.Module, settings: SparsifinerSettings) -> int:
    """Apply non-structural settings (budget, keep rate, thresholds) to a built model, all
    blocks or none; returns the budget."""
    layers = sparse_layers(model)
    for layer in layers:  # validate everything before changing anything
        settings.resolve_budget(layer.num_tokens, layer.num_prefix_tokens)
    for layer in layers:
        layer.set_settings(settings)
    model.sparsifiner_settings = settings
    return budget_of(model)


@torch.no_grad()
def count_parameters(model: nn.Module) -> dict:
    predictor = sum(p.numel() for p in predictor_parameters(model))
    total = sum(p.numel() for p in model.parameters())
    return {"backbone": total - predictor, "predictor": predictor, "total": total}
