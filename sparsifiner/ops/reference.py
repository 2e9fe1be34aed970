"""The eager PyTorch reference of TopKMaskedAttention: the specification.

Every fast path (CUDA kernel, ONNX graph, TensorRT engine) is compared against
these functions. They are differentiable with respect to q, k and v (phase-2
training uses them directly) and never with respect to the mask.

Numerics: scores, logits and the softmax are computed in fp32 whatever the input
dtype, so fp16 logits that would overflow in half precision stay finite; the output
is cast back to the input dtype. Ties in the top-k go to the lower key index: a
stable descending sort keeps equal scores in index order. Tile-shared selection (op
version 2, ``selection``) is specified in ``sparsifiner.ops.tile``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from sparsifiner.errors import SparsifinerError

if TYPE_CHECKING:
    from sparsifiner.op_spec import Selection


def connectivity_scores(coef: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """S = coef @ basis in fp32: [..., M, R] x [R, N] -> [..., M, N]."""
    return torch.matmul(coef.float(), basis.float())


def topk_indices(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Indices of the ``budget`` largest scores per row; ties go to the lower index."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return order[..., :budget]


def topk_mask(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Boolean mask with exactly ``budget`` True entries per row (see topk_indices)."""
    idx = topk_indices(scores, budget)
    return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(-1, idx, True)


def full_mask(row_mask: torch.Tensor, cls_rows: int = 1) -> torch.Tensor:
    """Prepend ``cls_rows`` dense rows to a [B, H, N-c, N] mask -> [B, H, N, N]."""
    *lead, _, n = row_mask.shape
    dense = torch.ones(*lead, cls_rows, n, dtype=torch.bool, device=row_mask.device)
    return torch.cat([dense, row_mask], dim=-2)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the True entries of each row; a row with no True entry gives zeros.

    An empty row is softmaxed over zeros (finite, no NaN in forward or backward) and
    then multiplied by its all-False mask, so it contributes nothing.
    """
    logits = logits.masked_fill(~mask, float("-inf"))
    nonempty = mask.any(dim=-1, keepdim=True)
    logits = torch.where(nonempty, logits, torch.zeros_like(logits))
    return torch.softmax(logits, dim=-1) * mask


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """softmax(scale * q k^T, masked) v in fp32, cast back to q's dtype. mask: [B, H, N, N]."""
    probs = masked_softmax(attention_logits(q, k, scale), mask)
    if dropout_p > 0:
        probs = torch.nn.functional.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v.float()).to(q.dtype)


def attention_logits(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * q k^T in fp32: [B, H, N, d] x [B, H, N, d] -> [B, H, N, N]."""
    return torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale


def topk_full_mask(coef: torch.Tensor, basis: torch.Tensor, budget: int, cls_rows: int,
                   selection: Optional["Selection"] = None) -> torch.Tensor:
    """The op's [B, H, N, N] key mask: dense CLS rows, top-``budget`` keys of coef @ basis elsewhere
    (per row, or shared by a tile of rows when ``selection`` says so)."""
    with torch.no_grad():
        if selection is None or selection.is_row:
            row_mask = topk_mask(connectivity_scores(coef, basis), budget)
        else:
            from sparsifiner.ops.tile import select_mask

            row_mask = select_mask(coef, basis, budget, selection)
        return full_mask(row_mask, cls_rows)


def check_inputs(q, k, v, coef, basis, budget: int, cls_rows: int, selection: Optional["Selection"] = None) -> None:
    """Shape and range checks of the op contract (raises SparsifinerError)."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise SparsifinerError(
            f"q, k, v must all be [B, H, N, d]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, h, n, _ = q.shape
    if basis.dim() != 2 or basis.shape[1] != n:
        raise SparsifinerError(f"basis must be [R, N={n}], got {tuple(basis.shape)}")
    if not 0 <= cls_rows < n:
        raise SparsifinerError(f"cls_rows {cls_rows} must be in [0, {n})")
    expected = (b, h, n - cls_rows, basis.shape[0])
    if tuple(coef.shape) != expected:
        raise SparsifinerError(f"coef must be [B, H, N-c, R] = {expected}, got {tuple(coef.shape)}")
    if not 1 <= budget <= n:
        raise SparsifinerError(f"budget {budget} is out of range: it must be between 1 and N = {n}")
    if selection is not None and not selection.is_row:
        from sparsifiner.ops.tile import check_selection

        check_selection(n - cls_rows, n, budget, selection)


def topk_masked_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    coef: torch.Tensor,
    basis: torch.Tensor,
    budget: int,
    scale: float,
    cls_rows: int = 1,
    selection: Optional["Selection"] = None,
) -> torch.Tensor:
    """TopKMaskedAttention as the op contract (sparsifiner.op_spec) defines it; ``selection``
    (version 2) chooses row or tile-shared selection, None meaning rows (version 1).

    The output is a new contiguous [B, H, N, d] tensor in q's dtype whatever the
    inputs' strides: every implementation (this one, the CUDA kernel, the fake
    implementation that torch.compile and torch.export trace with) promises that layout.
    """
    check_inputs(q, k, v, coef, basis, budget, cls_rows, selection)
    mask = topk_full_mask(coef, basis, budget, cls_rows, selection)
    return masked_attention(q, k, v, mask, scale).contiguous()
