"""``sparsifiner::topk_masked_attention_v2``: op version 2 (tile-shared selection) for torch.library.

Version 1 (``sparsifiner.ops.custom_op``) selects keys per row; version 2 adds the
``selection`` attributes of ``sparsifiner.op_spec`` (row, tile, two_level; grid width,
tile shape, tile budget). Its only implementation is the eager reference, on every
device (a CUDA kernel for tiles is future work); the fake implementation lets
torch.export trace it, and the ONNX exporter maps it to a version-2 TopKMaskedAttention
node. Like version 1, calls that need gradients run the differentiable reference.
"""
from __future__ import annotations

from typing import Optional

import torch

from sparsifiner import op_spec
from sparsifiner.op_spec import Selection
from sparsifiner.ops.custom_op import _exporting, topk_masked_attention
from sparsifiner.ops.reference import check_inputs, topk_masked_attention_reference

QUALNAME = f"{op_spec.TORCH_OP_NAMESPACE}::{op_spec.TORCH_OP_NAME_TILE}"


@torch.library.custom_op(QUALNAME, mutates_args=())
def topk_masked_attention_v2_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    coef: torch.Tensor,
    basis: torch.Tensor,
    budget: int,
    scale: float,
    cls_rows: int,
    selection: int,
    grid_cols: int,
    tile_rows: int,
    tile_cols: int,
    tile_budget: int,
) -> torch.Tensor:
    sel = Selection(op_spec.SELECTION_MODES[selection], grid_cols, tile_rows, tile_cols, tile_budget)
    with torch.no_grad():
        return topk_masked_attention_reference(q, k, v, coef, basis, budget, scale, cls_rows, sel)


@topk_masked_attention_v2_op.register_fake
def _(q, k, v, coef, basis, budget, scale, cls_rows, selection, grid_cols, tile_rows, tile_cols, tile_budget):
    # new_empty: contiguous, like the reference's output (empty_like would copy q's strides).
    return q.new_empty(q.shape)


def selected_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    coef: torch.Tensor,
    basis: torch.Tensor,
    budget: int,
    scale: float,
    cls_rows: int = op_spec.DEFAULT_CLS_ROWS,
    selection: Optional[Selection] = None,
) -> torch.Tensor:
    """Budgeted sparse attention with row or tile-shared selection (op_spec versions 1 and 2).

    Row selection goes to the version-1 op (its CUDA kernel and TensorRT plugin apply);
    tile selection to the version-2 op. Differentiable in q, k and v when gradients are needed.
    """
    if selection is None or selection.is_row:
        return topk_masked_attention(q, k, v, coef, basis, budget, scale, cls_rows)
    coef, basis = coef.detach(), basis.detach()
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if needs_grad and not _exporting():
        return topk_masked_attention_reference(q, k, v, coef, basis, budget, scale, cls_rows, selection)
    if not _exporting():
        check_inputs(q, k, v, coef, basis, budget, cls_rows, selection)
    attrs = selection.attributes()
    return torch.ops.sparsifiner.topk_masked_attention_v2(
        q, k, v, coef, basis, int(budget), float(scale), int(cls_rows), attrs[op_spec.ATTR_SELECTION],
        attrs[op_spec.ATTR_GRID_COLS], attrs[op_spec.ATTR_TILE_ROWS], attrs[op_spec.ATTR_TILE_COLS],
        attrs[op_spec.ATTR_TILE_BUDGET])
