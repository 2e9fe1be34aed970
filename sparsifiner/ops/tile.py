"""Key selection of TopKMaskedAttention, row or tile-shared: the specification (op version 2).

``select_mask(coef, basis, budget, selection)`` is the one definition every part uses
(the op reference, the layer in training, evaluation, validation). Modes
(``sparsifiner.op_spec`` states them as the contract):

row        each non-CLS row keeps its own top-B keys by s = coef @ basis (version 1);
tile       the rows of a tile of the patch grid share the tile's top-C keys by the summed
           scores t_j = sum_i s_ij, computed as (sum_i coef_i) @ basis; every row of the
           tile keeps exactly those C keys;
two_level  the tile's top-C as above, then each row's own top-B among them.
Ties go to the lower key index at both levels. The tile sum of coefficients is exact on
the exact-score grids (sparsifiner.ops.grid) while P (2^10 + R/2) 127 < 2^24 for a tile
of P rows, so t_j does not depend on summation order there (``max_exact_tile_rows``).

Tiles cover the grid row-major from the top-left; the last tile row and column are
partial when the tile shape does not divide the grid. A tile larger than the grid is
one partial tile: the whole grid.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from sparsifiner.errors import SparsifinerError
from sparsifiner.op_spec import Selection, max_exact_tile_rows  # noqa: F401  (re-exported)
from sparsifiner.ops.reference import connectivity_scores, topk_indices, topk_mask


def grid_shape(rows: int, grid_cols: int = 0) -> tuple[int, int]:
    """(grid rows, grid cols) of ``rows`` non-CLS rows; ``grid_cols`` 0 means a square grid."""
    if grid_cols == 0:
        side = math.isqrt(rows)
        if side * side != rows:
            raise SparsifinerError(f"{rows} query rows are not a square patch grid: give the grid width (grid_cols)")
        return side, side
    if rows % grid_cols:
        raise SparsifinerError(f"{rows} query rows do not fill a patch grid {grid_cols} wide")
    return rows // grid_cols, grid_cols


def tile_index(rows: int, selection: Selection, device=None) -> tuple[torch.Tensor, int]:
    """(tile of each non-CLS row [rows] int64, number of tiles), tiles numbered row-major."""
    gh, gw = grid_shape(rows, selection.grid_cols)
    tiles_across = -(-gw // selection.tile_cols)
    tiles_down = -(-gh // selection.tile_rows)
    r = torch.arange(rows, device=device)
    tile = (r // gw // selection.tile_rows) * tiles_across + (r % gw) // selection.tile_cols
    return tile, tiles_across * tiles_down


def tile_budget_of(budget: int, selection: Selection) -> int:
    """C: the selection's tile budget, or the budget when it is 0."""
    return selection.tile_budget or budget


def keys_per_row(budget: int, selection: Optional[Selection]) -> int:
    """Keys each non-CLS row attends to: C in tile mode, else the budget."""
    if selection is not None and selection.mode == "tile":
        return tile_budget_of(budget, selection)
    return budget


def check_selection(rows: int, keys: int, budget: int, selection: Optional[Selection]) -> None:
    """Raise SparsifinerError when the selection does not fit ``rows`` query rows and ``keys`` keys."""
    if selection is None or selection.is_row:
        return
    grid_shape(rows, selection.grid_cols)
    c = tile_budget_of(budget, selection)
    if not 1 <= c <= keys:
        raise SparsifinerError(f"tile budget {c} is out of range: it must be between 1 and N = {keys}")
    if selection.mode == "two_level" and budget > c:
        raise SparsifinerError(f"two_level selection needs budget <= tile budget, got {budget} > {c}")


def tile_scores(coef: torch.Tensor, basis: torch.Tensor, tile: torch.Tensor, num_tiles: int) -> torch.Tensor:
    """t = (sum of each tile's coefficient rows) @ basis in fp32: [..., M, R] -> [..., T, N]."""
    sums = torch.zeros(*coef.shape[:-2], num_tiles, coef.shape[-1], dtype=torch.float32, device=coef.device)
    sums.index_add_(-2, tile.to(coef.device), coef.float())
    return connectivity_scores(sums, basis)


def tile_topk(coef: torch.Tensor, basis: torch.Tensor, budget: int, selection: Selection) -> torch.Tensor:
    """Each row's tile's top-C key indices, in ascending key order: [..., M, C]."""
    rows = coef.shape[-2]
    tile, num_tiles = tile_index(rows, selection, coef.device)
    top = topk_indices(tile_scores(coef, basis, tile, num_tiles), tile_budget_of(budget, selection))
    return torch.sort(top, dim=-1).values.index_select(-2, tile)


def select_mask(coef: torch.Tensor, basis: torch.Tensor, budget: int,
                selection: Optional[Selection] = None) -> torch.Tensor:
    """The kept keys of the non-CLS rows as a boolean [..., M, N] mask (see the module doc)."""
    if selection is None or selection.is_row:
        return topk_mask(connectivity_scores(coef, basis), budget)
    n = basis.shape[-1]
    check_selection(coef.shape[-2], n, budget, selection)
    candidates = tile_topk(coef, basis, budget, selection)  # [..., M, C], ascending key index
    if selection.mode == "tile":
        keys = candidates
    else:
        # Row scores of the candidates only; candidates ascend, so the stable sort's ties go
        # to the lower position, which is the lower key index.
        row = connectivity_scores(coef, basis).gather(-1, candidates)
        keys = candidates.gather(-1, topk_indices(row, budget))
    mask = torch.zeros(*coef.shape[:-1], n, dtype=torch.bool, device=coef.device)
    return mask.scatter_(-1, keys, True)



def union_fraction(mask: torch.Tensor, selection: Selection) -> float:
    """Mean share of the N keys in the union of a tile's row selections (mask [..., M, N])."""
    rows, n = mask.shape[-2:]
    tile, num_tiles = tile_index(rows, selection, mask.device)
    union = torch.zeros(*mask.shape[:-2], num_tiles, n, dtype=torch.float32, device=mask.device)
    union.index_add_(-2, tile, mask.float())
    return float((union > 0).float().mean())
