"""Bottom layer: the TopKMaskedAttention reference (row and tile selection), its torch.library ops, sparse scores."""
from sparsifiner.ops.custom_op import topk_masked_attention
from sparsifiner.ops.grid import on_grid, quantize_basis, round_coefficients
from sparsifiner.ops.reference import (
    connectivity_scores,
    full_mask,
    masked_attention,
    masked_softmax,
    topk_indices,
    topk_mask,
    topk_masked_attention_reference,
)
from sparsifiner.ops.sparse_scores import sparse_connectivity_scores
from sparsifiner.ops.tile import select_mask
from sparsifiner.ops.tile_op import selected_attention

__all__ = [
    "connectivity_scores",
    "full_mask",
    "masked_attention",
    "masked_softmax",
    "on_grid",
    "quantize_basis",
    "round_coefficients",
    "select_mask",
    "selected_attention",
    "sparse_connectivity_scores",
    "topk_indices",
    "topk_mask",
    "topk_masked_attention",
    "topk_masked_attention_reference",
]
