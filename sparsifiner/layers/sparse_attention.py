"""SparsifinerAttention: timm's Attention with a connectivity predictor and a budget.

The qkv and proj weights are timm's own modules, kept under the same names, so a
timm state dict loads into a sparsified model unchanged. Modes:
  dense   attention is dense (phase 1: the features stay the teacher's);
  sparse  each non-CLS query attends to its top-``budget`` keys (section 3), or with
          ``settings.selection`` "tile"/"two_level" to keys shared by its tile of the
          patch grid (``sparsifiner.ops.tile``; op version 2).
With ``record_aux`` set (see sparsifiner.model.collect_aux) the layer also keeps its
per-block tensors for training and figures: coefficients, scores, mask and the dense
attention probabilities. Inference leaves it off and pays for none of them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sparsifiner.errors import SparsifinerError
from sparsifiner.layers.predictor import ConnectivityPredictor
from sparsifiner.op_spec import Selection
from sparsifiner.ops import (
    connectivity_scores,
    full_mask,
    masked_softmax,
    select_mask,
    selected_attention,
    topk_mask,
)
from sparsifiner.ops.tile import grid_shape
from sparsifiner.settings import MODES, SparsifinerSettings


# Settings that shape the predictor's parameters; the others may change on a built model.
STRUCTURAL_SETTINGS = ("n_down", "reduce_c_factor", "shared_projection", "score_scale")


class SparsifinerAttention(nn.Module):
    """Multi-head self-attention with learned, instance-dependent budgeted sparsity."""

    def __init__(self, attn: nn.Module, num_tokens: int, settings: SparsifinerSettings,
                 num_prefix_tokens: int = 1, grid_size: Optional[tuple] = None):
        super().__init__()
        settings.check_tokens(num_tokens)
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.attn_dim = getattr(attn, "attn_dim", attn.num_heads * attn.head_dim)
        self.scale = attn.scale
        self.num_tokens = num_tokens
        self.num_prefix_tokens = num_prefix_tokens
        self.settings = settings
        self.budget = settings.resolve_budget(num_tokens, num_prefix_tokens)
        self.grid_size = self._grid(num_tokens, grid_size, settings)
        self.tile_budget = self._tile_budget(settings, num_tokens)
        # timm's submodules, same names: state dicts stay compatible.
        self.qkv = attn.qkv
        self.q_norm = attn.q_norm
        self.k_norm = attn.k_norm
        self.attn_drop = attn.attn_drop
        self.norm = attn.norm
        self.gate = getattr(attn, "gate", None)
        self.proj = attn.proj
        self.proj_drop = attn.proj_drop
        self.predictor = ConnectivityPredictor(num_tokens, self.num_heads, self.head_dim, settings,
                                               num_prefix_tokens)
        self.mode = "sparse"
        self.record_aux = False
        self.aux: Optional[dict] = None

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise SparsifinerError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.mode = mode

    def set_num_tokens(self, num_tokens: int, grid_size: Optional[tuple] = None) -> None:
        """Update N, the patch grid and the budgets after a resolution change (see model.resize)."""
        self.settings.check_tokens(num_tokens)
        grid = self._grid(num_tokens, grid_size, self.settings)
        self.num_tokens = num_tokens
        self.predictor.num_tokens = num_tokens
        self.budget = self.settings.resolve_budget(num_tokens, self.num_prefix_tokens)
        self.grid_size = grid
        self.tile_budget = self._tile_budget(self.settings, num_tokens)

    def _grid(self, num_tokens: int, grid_size: Optional[tuple], settings: SparsifinerSettings) -> Optional[tuple]:
        """The patch grid (rows, cols) of the non-CLS tokens: given, or square; None when unknown
        (a non-square sequence with row selection, which needs no grid)."""
        rows = num_tokens - self.num_prefix_tokens
        if grid_size is not None:
            gh, gw = (int(x) for x in grid_size)
            if gh * gw != rows:
                raise SparsifinerError(f"a {gh}x{gw} patch grid does not hold the {rows} non-CLS tokens")
            return gh, gw
        try:
            return grid_shape(rows)
        except SparsifinerError:
            if settings.selection != "row":
                raise
            return None

    def _tile_budget(self, settings: SparsifinerSettings, num_tokens: int) -> Optional[int]:
        return None if settings.selection == "row" else settings.resolve_tile_budget(num_tokens, self.num_prefix_tokens)

    @property
    def selection(self) -> Optional[Selection]:
        """The op's selection (op_spec version 2), or None for per-row selection (version 1)."""
        if self.settings.selection == "row":
            return None
        return Selection(self.settings.selection, self.grid_size[1], self.settings.tile_rows, self.settings.tile_cols,
                         self.tile_budget)

    @property
    def keys_per_row(self) -> int:
        """Keys each non-CLS query attends to: the tile budget C with tile selection, else the budget."""
        return self.tile_budget if self.settings.selection == "tile" else self.budget

    def set_settings(self, settings: SparsifinerSettings) -> None:
        """Swap in settings that differ only in non-structural knobs (budget, keep rate,
        thresholds); the budget is recomputed. Structural ones (rank, reduction) cannot change."""
        for name in STRUCTURAL_SETTINGS:
            if getattr(settings, name) != getattr(self.settings, name):
                raise SparsifinerError(f"{name} is fixed when the predictor is built ({getattr(self.settings, name)}): "
                                       "build a new model to change it")
        budget = settings.resolve_budget(self.num_tokens, self.num_prefix_tokens)
        self._grid(self.num_tokens, self.grid_size, settings)
        tile_budget = self._tile_budget(settings, self.num_tokens)
        repruned = self.predictor._pruned and any(
            getattr(settings, name) != getattr(self.settings, name)
            for name in ("basis_threshold", "basis_prune", "exact_scores"))
        self.settings = self.predictor.settings = settings
        self.budget = budget
        self.tile_budget = tile_budget
        if repruned:  # the stored pruned basis derives from these settings
            self.predictor.prune_basis_()

    def extra_repr(self) -> str:
        tiles = ("" if self.settings.selection == "row" else f", selection={self.settings.selection} "
                 f"{self.settings.tile_rows}x{self.settings.tile_cols} C={self.tile_budget}")
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, tokens={self.num_tokens}, budget={self.budget}"
                f"{tiles}, mode={self.mode}")

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False):
        if attn_mask is not None or is_causal:
            raise SparsifinerError("Sparsifiner attention takes no external attention mask or causal flag")
        b, n, _ = x.shape
        if n != self.num_tokens:
            raise SparsifinerError(
                f"got {n} tokens but the model was built for {self.num_tokens}: "
                "resize it with sparsifiner.resize_sparsifiner(model, img_size)"
            )
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        dropout = self.attn_drop.p if self.training else 0.0

        if self.record_aux or (self.mode == "sparse" and dropout > 0):
            out = self._attend_explicit(q, k, v, dropout)
        elif self.mode == "dense":
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale)
        else:
            coef, basis = self.predictor(q, k, sparse=True)
            out = selected_attention(q, k, v, coef, basis, self.budget, self.scale, self.num_prefix_tokens,
                                     self.selection)

        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))

    def _attend_explicit(self, q, k, v, dropout: float) -> torch.Tensor:
        """Attention with every intermediate kept in self.aux (training, metrics, figures)."""
        sparse = self.mode == "sparse"
        coef, basis = self.predictor(q, k, sparse=sparse)
        scores = connectivity_scores(coef, basis)  # differentiable: the phase-1 loss uses it
        with torch.no_grad():
            selection = self.selection
            if selection is None:
                row_mask = topk_mask(scores.detach(), self.budget)
            else:
                row_mask = select_mask(coef.detach(), basis.detach(), self.budget, selection)
        logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.scale
        dense_attn = torch.softmax(logits, dim=-1)
        if sparse:
            attn = masked_softmax(logits, full_mask(row_mask, self.num_prefix_tokens))
        else:
            attn = dense_attn
        aux = {"coef": coef, "basis": basis, "scores": scores, "mask": row_mask, "attn": dense_attn}
        if sparse:
            aux["sparse_attn"] = attn
        self.aux = aux if self.record_aux else None
        if dropout > 0:
            attn = F.dropout(attn, p=dropout)
        return torch.matmul(attn, v.float()).to(q.dtype)
