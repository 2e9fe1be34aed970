"""Selection-aware validation: tell key-selection flips from numerical error.

Top-B selection is discontinuous. With exact scores (``sparsifiner.ops.grid``) every
implementation of the op selects the same keys *from the same coefficients*, but a
runtime computes the coefficients themselves through a whole network in its own float
order, and a coefficient that lands on the other side of a rounding or pruning
boundary changes its row's keys. Comparing logits alone cannot tell that from a bug.

So validation reads each block's op coefficients out of the runtime (the exported
graph names them: artifact metadata ``op_inputs``) and
* compares them with PyTorch's own (``coefficients_outside``): each pair must agree
  within the tolerance plus one grid step, except a coefficient that one side pruned
  and the other kept at the pruning boundary (the threshold, or the row's smallest
  kept value under top-k): upstream float noise moves values across that boundary,
  a predictor bug moves them much further;
* counts the query rows whose selected keys differ (``selection_flips``);
* re-runs PyTorch with the runtime's coefficients injected, so both sides attend to
  the same keys, and compares the outputs: what is left is numerical error, and a
  real graph bug (wrong attention, wrong op) still fails.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sparsifiner.ops.grid import COEF_STEP

ROW_CHUNK = 256  # query rows per score block, to bound memory at large N


@dataclass
class SelectionStats:
    """Per-block counts of rows whose keys differ, and the coefficients' largest difference."""

    rows: int = 0
    rows_differing: int = 0
    coef_max_abs: float = 0.0
    coef_outside: int = 0  # coefficient pairs that disagree beyond float noise
    per_block: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "rows_differing": self.rows_differing,
                "share_differing": self.rows_differing / max(self.rows, 1), "coef_max_abs": self.coef_max_abs,
                "coef_outside_tolerance": self.coef_outside, "per_block": self.per_block}


def selected_keys(coef, basis, budget: int, selection=None):
    """Boolean [.., M, N] masks of the reference's selection: top-B per row, computed in row
    chunks, or tile-shared (``selection``, op_spec version 2), computed per image."""
    import torch

    from sparsifiner.ops.reference import connectivity_scores, topk_mask
    from sparsifiner.ops.tile import select_mask

    coef = torch.as_tensor(np.asarray(coef, dtype=np.float32))
    if selection is not None and not selection.is_row:  # tiles span rows: chunk over images instead
        return torch.cat([select_mask(coef[i:i + 1], basis, budget, selection) for i in range(coef.shape[0])])
    chunks = [topk_mask(connectivity_scores(coef[..., i:i + ROW_CHUNK, :], basis), budget)
              for i in range(0, coef.shape[-2], ROW_CHUNK)]
    return torch.cat(chunks, dim=-2)


def coefficients_outside(reference: np.ndarray, candidate: np.ndarray, settings, atol: float, rtol: float) -> int:
    """How many coefficient pairs disagree beyond float noise (see the module docstring)."""
    tol = atol + rtol * np.maximum(np.abs(reference), np.abs(candidate)) + COEF_STEP
    close = np.abs(candidate - reference) <= tol
    if settings.coef_prune == "threshold":
        boundary = np.full(reference.shape[:-1] + (1,), settings.coef_threshold, dtype=np.float32)
    else:  # top-k or none: the smallest value each side kept in the row
        def smallest_kept(c):
            return np.where(c > 0, c, np.inf).min(axis=-1, keepdims=True)
        boundary = np.maximum(smallest_kept(reference), smallest_kept(candidate))
        boundary = np.where(np.isfinite(boundary), boundary, 0.0)
    one_sided = (reference == 0) != (candidate == 0)
    at_boundary = one_sided & (np.maximum(reference, candidate) <= boundary + tol)
    return int((~(close | at_boundary)).sum())


def update_selection(stats: SelectionStats, model, reference: dict, candidate: dict, atol: float, rtol: float) -> None:
    """Add one batch: ``reference``/``candidate`` map coefficient names to [B, H, N-c, R] arrays."""
    import torch

    from sparsifiner.model.sparsify import coefficient_names, sparse_layers

    layers = dict(zip(coefficient_names(model), sparse_layers(model)))
    for name, ref in reference.items():
        if name not in candidate:
            continue
        ref = np.asarray(ref, dtype=np.float32)
        cand = np.asarray(candidate[name], dtype=np.float32)
        diff = np.abs(cand - ref)
        stats.coef_max_abs = max(stats.coef_max_abs, float(diff.max()) if diff.size else 0.0)
        layer = layers[name]
        stats.coef_outside += coefficients_outside(ref, cand, layer.settings, atol, rtol)
        with torch.no_grad():
            basis = layer.predictor.sparse_basis().float().cpu()
            sel = layer.selection
            flips = (selected_keys(ref, basis, layer.budget, sel) != selected_keys(cand, basis, layer.budget, sel)).any(-1)
        block = stats.per_block.setdefault(name, {"rows": 0, "rows_differing": 0})
        block["rows"] += int(flips.numel())
        block["rows_differing"] += int(flips.sum())
        stats.rows += int(flips.numel())
        stats.rows_differing += int(flips.sum())


def probe_selection(run_op, coef, basis, budget: int, cls_rows: int = 1, head_dim: int = 64, dtype=None,
                    keys_per_row: int = 0):
    """The keys an implementation of the op selects, read from its outputs: [B, H, N-c, N] bool.

    ``run_op(q, k, v, coef, basis)`` runs the implementation (with ``budget``, a scale and
    ``cls_rows`` fixed by the caller) and returns ``out`` [B, H, N, d]. With q = k = 0
    every kept logit is 0, so row i's output is the mean of its kept v rows; with v
    one-hot over a window of ``head_dim`` keys, an output entry is 1/budget exactly when
    that key was kept (1/``keys_per_row`` when rows keep another number of keys: tile selection). ceil(N / head_dim) windows read the whole mask, so the probe works
    for implementations that support only some head dims (the CUDA kernels, plugins).
    """
    import torch

    coef = torch.as_tensor(coef)
    b, h, rows, _ = coef.shape
    n = rows + cls_rows
    dtype = dtype or coef.dtype
    zeros = torch.zeros(b, h, n, head_dim, dtype=dtype)
    mask = torch.zeros(b, h, rows, n, dtype=torch.bool)
    for start in range(0, n, head_dim):
        width = min(head_dim, n - start)
        v = torch.zeros(b, h, n, head_dim, dtype=dtype)
        v[:, :, torch.arange(start, start + width), torch.arange(width)] = 1
        out = torch.as_tensor(run_op(zeros, zeros, v, coef, basis)).float()
        mask[..., start:start + width] = out[:, :, cls_rows:, :width] > 0.5 / (keys_per_row or budget)
    return mask
