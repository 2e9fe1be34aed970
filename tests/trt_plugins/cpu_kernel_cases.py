"""Inputs and mask read-out for the native CPU kernel tests (ONNX Runtime and torch bindings).

Mask identity is only defined on the score grid (sparsifiner.op_spec): coefficients are
multiples of 2^-10 in [0, 1] and each basis column is m * 2^e with |m| <= 127, so every
score is exact in fp32 whatever the summation order. The generators here make such
inputs with many exact ties (zeros above all), and ``quantise_*`` move captured model
tensors onto the grid with the project's rule.

A mask is read out of any implementation with q = k = 0 and v = the identity (d = N):
output row i is then 1/budget exactly on the keys row i kept.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from sparsifiner.ops.reference import connectivity_scores, full_mask, topk_mask


def quantise_coef(coef: torch.Tensor) -> torch.Tensor:
    """round-half-even(coef * 1024) / 1024, clamped to [0, 1]."""
    return (torch.round(coef.float() * 1024) / 1024).clamp(0, 1)


def quantise_basis(basis: torch.Tensor) -> torch.Tensor:
    """Per column: e = max(-24, ceil(log2(max|b| / 127))), m = round-half-even(b / 2^e)."""
    b = basis.float()
    peak = b.abs().amax(dim=0)
    e = torch.where(peak > 0, torch.ceil(torch.log2(peak.clamp_min(1e-30) / 127)), torch.full_like(peak, -24))
    e = e.clamp_min(-24)
    m = torch.round(b / torch.exp2(e)).clamp(-127, 127)
    return m * torch.exp2(e)


def tie_heavy_inputs(b: int, h: int, n: int, r: int, c: int, seed: int, zero_rows: float = 0.1):
    """Grid coef/basis with few distinct values: many exact ties, most of them at 0."""
    g = torch.Generator().manual_seed(seed)
    coef = torch.randint(0, 9, (b, h, n - c, r), generator=g).float() / 8
    coef = coef * (torch.rand(coef.shape, generator=g) < 0.3)
    coef = coef / coef.sum(-1, keepdim=True).clamp_min(1)  # per-row sum <= 1 ...
    coef = quantise_coef(coef)                                # ... then back on the grid
    coef[torch.rand(b, h, n - c, generator=g) < zero_rows] = 0  # rows with no coefficient: all scores 0
    m = torch.randint(-3, 4, (r, n), generator=g).float() * (torch.rand(r, n, generator=g) < 0.4)
    e = torch.randint(-8, -2, (1, n), generator=g).float()
    return coef, m * torch.exp2(e)


def structured_inputs(b: int, h: int, n: int, r: int, c: int, seed: int, topk: int = 8):
    """Trained-like grid inputs: basis rows are bumps on the patch grid (pruned at 0.3 of
    their peak), each query row keeps the top ``topk`` of a softmax over its distance to
    the bump centres. Smooth scores with 40-70 % exact zeros, like a trained predictor."""
    g = np.random.default_rng(seed)
    side = max(1, int(round(math.sqrt(n - c))))
    patches = n - c
    ys, xs = np.divmod(np.arange(patches), side)
    centres = g.uniform(0, side, size=(r, 2))
    sigma = g.uniform(0.1, 0.25, size=r) * side
    dist2 = (ys[None, :] - centres[:, :1]) ** 2 + (xs[None, :] - centres[:, 1:]) ** 2
    bumps = np.exp(-dist2 / (2 * sigma[:, None] ** 2)) * (1 + 0.05 * g.standard_normal((r, patches)))
    bumps[bumps < 0.3] = 0
    basis = np.concatenate([g.uniform(0, 1, size=(r, c)), bumps], axis=1)
    coef = np.zeros((b, h, patches, r))
    for bi in range(b):
        for hi in range(h):
            logits = -dist2.T / (0.02 * side * side) + 0.3 * g.standard_normal((patches, r))
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            cut = np.sort(p, axis=1)[:, -topk][:, None]
            coef[bi, hi] = np.where(p >= cut, p, 0)
    return quantise_coef(torch.from_numpy(coef)), quantise_basis(torch.from_numpy(basis))


def readout_qkv(b: int, h: int, n: int, dtype=torch.float32):
    """q = k = 0 and v = I: the output row of query i is 1/budget on its kept keys."""
    zeros = torch.zeros(b, h, n, n, dtype=dtype)
    eye = torch.eye(n, dtype=dtype).expand(b, h, n, n).contiguous()
    return zeros, zeros.clone(), eye


def reference_mask(coef: torch.Tensor, basis: torch.Tensor, budget: int, c: int) -> torch.Tensor:
    return full_mask(topk_mask(connectivity_scores(coef, basis), budget), c)


def mask_of(out) -> torch.Tensor:
    """The kept-key mask read from a read-out output (see readout_qkv)."""
    return torch.as_tensor(np.asarray(out, dtype=np.float32)) > 0


def random_qkv(b: int, h: int, n: int, d: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g).to(dtype) for _ in range(3)]
