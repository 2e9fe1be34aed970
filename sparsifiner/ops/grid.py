"""Exact connectivity scores: the value grids of coef and basis (the op's precondition).

S = coef @ basis decides which keys every query keeps, and top-B is discontinuous: if
two runtimes sum the R products of a score in different orders, a near-tie can go
either way. Putting both factors on value grids makes every product and every partial
sum an exactly representable fp32 number, so S is bit-identical in any summation
order, with or without FMA, and with fp16 or TF32 tensor-core products accumulated in
fp32. The keys each runtime selects are then identical by construction.

The grids (``sparsifiner.op_spec`` states them as the op's precondition):
* coef: integer multiples of 2^-10 (``COEF_STEP``), rounded half to even. Coefficients
  are softmax outputs (>= 0, each row summing to at most 1), so a row's integer codes
  sum to at most 2^10 + R/2.
* basis, per key column j: ``m_rj * 2^e_j`` with integers |m_rj| <= 127 and
  e_j = max(-24, ceil(log2(max_r |b_rj| / 127))), m rounded half to even: 8-bit codes
  with a power-of-two scale per column, exactly representable in fp32, fp16 and bf16.
Every partial sum of a score is then an integer multiple of 2^(e_j - 10) below
(2^10 + R/2) * 127 < 2^24 units for R < 2^14: exact in fp32.

Where: model side, before the op. The basis is quantised once when it is pruned (it
is a constant of the exported graph); coef is rounded in the forward pass after
pruning, so the exported graph carries the rounding (Mul, Round, Mul). The setting
``exact_scores=False`` keeps the float behaviour of the authors' code.
"""
from __future__ import annotations

import torch

COEF_STEP = 2.0 ** -10
BASIS_CODE_MAX = 127
BASIS_MIN_EXPONENT = -24


def round_coefficients(coef: torch.Tensor) -> torch.Tensor:
    """coef rounded half to even onto multiples of 2^-10 (exact scaling by powers of two)."""
    return torch.round(coef * (1.0 / COEF_STEP)) * COEF_STEP


def basis_column_scale(basis: torch.Tensor) -> torch.Tensor:
    """The power-of-two scale 2^e_j of each key column j of a [R, N] basis, as [1, N]."""
    peak = basis.detach().float().abs().amax(dim=0, keepdim=True)
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    exponent = torch.ceil(torch.log2(peak / BASIS_CODE_MAX)).clamp(min=BASIS_MIN_EXPONENT)
    return torch.exp2(exponent)


def quantize_basis(basis: torch.Tensor) -> torch.Tensor:
    """The basis as 8-bit codes times a power-of-two scale per key column (same dtype)."""
    scale = basis_column_scale(basis)
    codes = torch.round(basis.float() / scale).clamp(-BASIS_CODE_MAX, BASIS_CODE_MAX)
    return (codes * scale).to(basis.dtype)


def on_grid(coef: torch.Tensor, basis: torch.Tensor) -> bool:
    """Whether coef and basis satisfy the precondition (coef in [0, 1] on the 2^-10 grid,
    basis equal to its own quantisation)."""
    c = coef.detach().float()
    if not bool(((c >= 0) & (c <= 1) & (round_coefficients(c) == c)).all()):
        return False
    b = basis.detach().float()
    return bool((quantize_basis(b) == b).all())
