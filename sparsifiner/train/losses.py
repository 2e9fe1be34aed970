"""The losses of the three phases (METHOD.md section 4).

Each batch loss says how it reduces over images, because gradient accumulation and
data parallel must preserve it: a "mean" loss is divided by the accumulation steps
(DDP already averages over processes), a "sum" loss is multiplied by the world size
(DDP's averaging would otherwise shrink the global sum) and never divided. The L1
penalty depends on the weights only and is divided by the accumulation steps.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparsifiner.train.augment import classification_loss
from sparsifiner.train.settings import PhaseSettings


def attention_distillation(aux: Sequence[dict], criterion: str = "mse", reduction: str = "sum") -> torch.Tensor:
    """Distance between each block's scores S and its dense attention of the non-CLS rows, block-averaged.

    mse: squared error of S [B, H, N-c, N] against the probabilities (the paper).
    kl:  KL(dense row || softmax(S) row), the authors' code's variant.
    reduction "sum" sums over images, heads, rows and keys; "mean" averages over them
    (for kl: the per-row KL averaged over rows).
    """
    total = 0.0
    for record in aux:
        scores = record["scores"].float()
        target = record["attn"][..., -scores.shape[-2]:, :].detach().float()
        if criterion == "mse":
            loss = F.mse_loss(scores, target, reduction=reduction)
        else:
            per_row = F.kl_div(F.log_softmax(scores, dim=-1), target, reduction="none").sum(-1)
            loss = per_row.sum() if reduction == "sum" else per_row.mean()
        total = total + loss
    return total / len(aux)


def l1_basis_penalty(bases: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum |W_up| over all blocks (the L1 regulariser of Table 1)."""
    return sum(b.abs().sum() for b in bases)


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the class distributions, batch mean (DynamicViT's form)."""
    return F.kl_div(F.log_softmax(student.float(), dim=-1), F.log_softmax(teacher.float(), dim=-1),
                    reduction="batchmean", log_target=True)


def token_distillation(student: torch.Tensor, teacher: torch.Tensor, prefix: int = 1) -> torch.Tensor:
    """MSE between the final patch tokens (after the last norm) of student and teacher."""
    return F.mse_loss(student[:, prefix:].float(), teacher[:, prefix:].float())


def phase2_loss(logits, tokens, teacher_logits, teacher_tokens, targets, settings: PhaseSettings,
                prefix: int = 1) -> tuple[torch.Tensor, dict]:
    """ce_weight CE + kl_weight KL + token_weight MSE, and the parts (floats) for the log.

    targets: class indices (CE with the phase's label smoothing) or the soft targets of a
    mixed batch (soft-target CE; the smoothing is already in them)."""
    ce = classification_loss(logits, targets, settings.label_smoothing)
    kl = logit_distillation(logits, teacher_logits)
    tok = token_distillation(tokens, teacher_tokens, prefix)
    total = settings.ce_weight * ce + settings.kl_weight * kl + settings.token_weight * tok
    return total, {"ce": float(ce.detach()), "kl": float(kl.detach()), "token": float(tok.detach())}


class FeaturesAndLogits(nn.Module):
    """Wraps a timm ViT so one forward (through DDP) returns (final tokens, logits)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model.forward_features(x)
        return tokens, self.model.forward_head(tokens)
