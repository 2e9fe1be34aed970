"""DeiT's training pipeline from timm's own pieces: policy check, Mixup/CutMix, soft-target loss, model EMA.

The authors' released training code (DeiT / DynamicViT lineage, on timm 0.3.2) mixes
every training batch with ``timm.data.Mixup`` (label smoothing folded into the mixed
targets), trains the classification term with ``timm.loss.SoftTargetCrossEntropy``
and keeps a ``timm.utils.ModelEma`` of the weights. This module builds the same pieces
from ``AugmentSettings`` / ``EmaSettings`` with the current timm (``ModelEmaV3``, the
successor of ``ModelEma``: the same constant-decay update of every parameter and
floating-point buffer). The image transform itself is built in ``sparsifiner.data``
from ``AugmentSettings.transform_kwargs()``.

A phase's EMA weights are written beside its raw weights as ``<phase>.ema.safetensors``
(a complete checkpoint of the same format, usable wherever the raw one is);
``ema_weights_path`` finds them for ``sparsifiner evaluate --weights ema``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from sparsifiner.errors import SparsifinerError

if TYPE_CHECKING:
    from sparsifiner.train.settings import AugmentSettings, EmaSettings

EMA_SUFFIX = ".ema"


def check_auto_augment(policy: str) -> None:
    """Raise a one-line error unless timm's transform factory accepts ``policy``."""
    from timm.data import create_transform

    if not isinstance(policy, str) or not policy.strip():
        raise SparsifinerError(f"auto_augment must be a timm policy string such as rand-m9-mstd0.5-inc1, or null; "
                               f"got {policy!r}")
    try:
        create_transform(32, is_training=True, auto_augment=policy)
    except (AssertionError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise SparsifinerError(f"auto_augment {policy!r} is not a timm augmentation policy ({exc or type(exc).__name__}); "
                               "e.g. rand-m9-mstd0.5-inc1 (RandAugment), augmix-m5, original") from None


def build_mixup(aug: "AugmentSettings", num_classes: int, label_smoothing: float):
    """timm's Mixup/CutMix with the phase's label smoothing folded into the mixed targets."""
    from timm.data import Mixup

    return Mixup(mixup_alpha=aug.mixup_alpha, cutmix_alpha=aug.cutmix_alpha, prob=aug.mixup_prob,
                 switch_prob=aug.mixup_switch_prob, mode=aug.mixup_mode, label_smoothing=label_smoothing,
                 num_classes=num_classes)


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy, batch mean: on soft (mixed) targets [B, C] timm's SoftTargetCrossEntropy (their
    smoothing is already in them), on class indices [B] the label-smoothed cross-entropy."""
    if targets.ndim == logits.ndim:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()(logits.float(), targets.float())
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def count_correct(logits: torch.Tensor, targets: torch.Tensor) -> Optional[float]:
    """Top-1 hits of a batch; None for mixed targets, whose images belong to two classes."""
    if targets.ndim == logits.ndim:
        return None
    return float((logits.argmax(-1) == targets).sum())


def build_ema(model: nn.Module, ema: "EmaSettings"):
    """timm's ModelEmaV3 of ``model`` (same device and dtype), constant decay."""
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=ema.decay)


def ema_path(path: Union[str, Path]) -> Path:
    """``phase2.safetensors`` -> ``phase2.ema.safetensors``: where a phase's EMA weights are written."""
    path = Path(path)
    return path.with_name(f"{path.stem}{EMA_SUFFIX}{path.suffix}")


def ema_weights_path(path: Union[str, Path]) -> Path:
    """The EMA checkpoint written beside ``path``, with a one-line error when the run kept none."""
    path = Path(path)
    if path.stem.endswith(EMA_SUFFIX):
        return path
    found = ema_path(path)
    if not found.is_file():
        raise SparsifinerError(f"{path} has no EMA weights beside it ({found.name}): train that phase with "
                               "--set <phase>.ema=true, or evaluate --weights raw")
    return found
