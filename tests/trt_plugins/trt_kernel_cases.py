"""Inputs for the kernel tests (emulator on CPU, CUDA on GPU) and how to judge outputs.

Coefficients and basis are quantised to multiples of 1/8 (pruned like the paper's:
top-8 or thresholded coefficients, ~90 % zero basis), so every connectivity score is
a multiple of 1/64 and exact in fp32 whatever the summation order. The kernel and the
reference then see identical scores: the selected key sets must match exactly, and
the many exact ties must go to the lower key index in both. q, k and v are continuous.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sparsifiner.ops.reference import topk_masked_attention_reference

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# sparsifiner.plugin::DataType values
DATA_TYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 7}
ALGO_CODES = {"auto": 0, "tiled": 1, "rowwise": 2, "tiled2d": 3}


@dataclass
class Case:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    coef: torch.Tensor
    basis: torch.Tensor
    budget: int
    scale: float
    cls_rows: int

    def args(self):
        return self.q, self.k, self.v, self.coef, self.basis, self.budget, self.scale, self.cls_rows

    def reference_fp32(self) -> torch.Tensor:
        """The spec evaluated on the (already rounded) inputs in fp32, not rounded back."""
        return topk_masked_attention_reference(
            self.q.float(), self.k.float(), self.v.float(), self.coef, self.basis, self.budget, self.scale, self.cls_rows
        )


def make_case(
    bh: int,
    n: int,
    d: int,
    budget: int,
    *,
    dtype: torch.dtype = torch.float16,
    rank: int = 32,
    cls_rows: int = 1,
    seed: int = 0,
    coef_mode: str = "top8",
    basis_zero: float = 0.9,
    constant_rows: int = 0,
    coef_dtype: torch.dtype | None = None,
    device: str = "cpu",
    heads: int = 1,
    continuous: bool = False,
) -> Case:
    """A case of batch*heads = bh (shaped [bh // heads, heads, ...]).

    coef_mode: "top8" keeps 8 random coefficients per row, "threshold" zeroes those
    below 3/8, "dense" keeps all. constant_rows: that many rows get zero coefficients,
    so all their scores tie (the first `budget` keys win). continuous: coefficients and
    basis take continuous values instead, with one nonzero per basis column, so every
    score is a single product: still exact in any order, but (almost) free of ties.
    """
    g = torch.Generator().manual_seed(seed)
    m = n - cls_rows
    shape = (bh // heads, heads)
    q, k, v = (torch.randn(*shape, n, d, generator=g).to(dtype) for _ in range(3))
    levels = torch.randint(1, 9, (*shape, m, rank), generator=g).float() / 8
    if coef_mode == "top8":
        keep = torch.rand(*shape, m, rank, generator=g).argsort(dim=-1) < min(8, rank)
        coef = levels * keep
    elif coef_mode == "threshold":
        coef = torch.where(levels >= 3 / 8, levels, torch.zeros_like(levels))
    else:
        coef = levels
    if constant_rows:
        rows = torch.randperm(m, generator=g)[:constant_rows]
        coef[..., rows, :] = 0
    basis = torch.randint(-8, 9, (rank, n), generator=g).float() / 8
    basis = basis * (torch.rand(rank, n, generator=g) >= basis_zero)
    if continuous:
        coef = torch.rand(coef.shape, generator=g) * (coef != 0)
        basis = torch.zeros(rank, n).scatter_(0, torch.randint(0, rank, (1, n), generator=g), torch.randn(1, n, generator=g))
    cdt = coef_dtype or dtype
    return Case(
        q.to(device), k.to(device), v.to(device), coef.to(cdt).to(device), basis.to(cdt).to(device),
        budget, d**-0.5, cls_rows,
    )


def error_budget(case: Case, dtype: torch.dtype, ref: torch.Tensor) -> float:
    """Allowed max-abs error for `dtype` on the CPU: twice what an fp32-accumulating
    attention loses when it rounds the probabilities and the output to `dtype` (as the
    tensor-core kernel and flash attention do), plus one output ulp."""
    if dtype == torch.float32:
        return 1e-5 * max(1.0, ref.abs().max().item())
    from sparsifiner.ops.reference import full_mask, topk_mask, connectivity_scores, masked_softmax

    mask = full_mask(topk_mask(connectivity_scores(case.coef, case.basis), case.budget), case.cls_rows)
    logits = torch.matmul(case.q.float(), case.k.float().transpose(-1, -2)) * case.scale
    probs = masked_softmax(logits, mask)
    lowp = torch.matmul(probs.to(dtype).float(), case.v.float()).to(dtype).float()
    yardstick = (lowp - ref).abs().max().item()
    ulp = torch.finfo(dtype).eps * ref.abs().max().item()
    return 2 * yardstick + ulp


def budget_for(n: int, keep_rate: float) -> int:
    """budget = ceil(keep_rate * (N - 1)), the settings the benchmark uses."""
    return max(1, math.ceil(keep_rate * (n - 1)))
