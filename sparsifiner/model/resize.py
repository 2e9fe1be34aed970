"""Resolution transfer: run a Sparsifiner built at one image size at another.

P_down [N, R] and W_up [R, N] are tied to the token grid like position embeddings.
They are resampled on the patch grid the way timm resamples position embeddings
(bicubic, antialiased), with the CLS entry kept as is. The stored pruned basis is
pruned again from the resized W_up, and each block's budget is recomputed for the
new N from the keep rate (an explicit budget must still fit).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from sparsifiner.errors import SparsifinerError
from sparsifiner.layers.predictor import prune_basis_for
from sparsifiner.model.sparsify import num_tokens_of, settings_of, sparse_layers


def resample_token_axis(weight: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int],
                        num_prefix_tokens: int = 1) -> torch.Tensor:
    """Resample a [N, C] tensor along its token axis from old_grid to new_grid."""
    from timm.layers import resample_abs_pos_embed

    out = resample_abs_pos_embed(weight.unsqueeze(0), new_size=list(new_grid), old_size=list(old_grid),
                                 num_prefix_tokens=num_prefix_tokens, verbose=False)
    return out.squeeze(0)


@torch.no_grad()
def resize_sparsifiner(model: nn.Module, img_size: Union[int, Sequence[int]]) -> nn.Module:
    """Change the model's input size in place (position embeddings, predictors, budgets)."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    layers = sparse_layers(model)
    settings = settings_of(model)
    old_grid = tuple(model.patch_embed.grid_size)
    patch = model.patch_embed.patch_size
    if any(s % p for s, p in zip(size, patch)):
        raise SparsifinerError(f"image size {size} is not a multiple of the patch size {tuple(patch)}")
    new_grid = tuple(s // p for s, p in zip(size, patch))
    prefix = model.num_prefix_tokens
    new_tokens = new_grid[0] * new_grid[1] + prefix
    settings.check_tokens(new_tokens)
    model.set_input_size(img_size=size)
    if num_tokens_of(model) != new_tokens:
        raise SparsifinerError(f"timm resized the model to {num_tokens_of(model)} tokens, expected {new_tokens}")
    for layer in layers:
        pred = layer.predictor
        pred.p_down = nn.Parameter(resample_token_axis(pred.p_down.data, old_grid, new_grid, prefix),
                                   requires_grad=pred.p_down.requires_grad)
        if pred.w_up is not None:
            pred.w_up = nn.Parameter(resample_token_axis(pred.w_up.data.t(), old_grid, new_grid, prefix).t().contiguous(),
                                     requires_grad=pred.w_up.requires_grad)
        was_pruned = bool(pred.basis_is_pruned)
        pred.pruned_basis = torch.zeros_like(pred.basis.data)
        if was_pruned:
            pred.pruned_basis.copy_(prune_basis_for(pred.basis.data, settings))
        layer.set_num_tokens(new_tokens, new_grid)
    arch = getattr(model, "sparsifiner_arch", None)
    if arch is not None:
        arch["img_size"] = list(size)
    return model
