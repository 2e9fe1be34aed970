"""The connectivity mask predictor: a cheap low-rank estimate of each row's attention.

One per attention block, shared by its heads (METHOD.md section 2):
    q_r = q W_q + b_q,  k_r = k W_k + b_k            channel reduction d -> d_r
    k_low = k_r^T P_down                              token reduction N -> R
    A_down = softmax(scale * q_r k_low)  (non-CLS rows) basis coefficients [.., N-c, R]
    S = A_down W_up                                   connectivity scores [.., N-c, N]
In sparse mode the factors are pruned: W_up by |w| <= tau_basis (once, between the
training phases: ``prune_basis_``) and A_down by threshold or top-k per forward; with
``exact_scores`` both then go onto the value grids of ``sparsifiner.ops.grid``.
Initialisation follows the authors' code: trunc_normal(std=0.02) for every weight,
zero biases.
"""
from __future__ import annotations

import torch
from torch import nn

from sparsifiner.ops.grid import quantize_basis, round_coefficients
from sparsifiner.settings import SparsifinerSettings


def prune_basis_tensor(w_up: torch.Tensor, threshold: float, mode: str) -> torch.Tensor:
    """Zero the entries with |w| <= threshold; mode "abs" keeps |w|, "signed" keeps w."""
    keep = w_up.abs() > threshold
    values = w_up.abs() if mode == "abs" else w_up
    return torch.where(keep, values, torch.zeros_like(values))


def prune_coefficients(coef: torch.Tensor, settings: SparsifinerSettings) -> torch.Tensor:
    """Coefficient pruning of the sparse mode (threshold, top-k per row, or none), then the
    row's best coefficient kept (``coef_keep_best``) and the value grid (``exact_scores``)."""
    if settings.coef_prune == "threshold":
        pruned = torch.where(coef > settings.coef_threshold, coef, torch.zeros_like(coef))
    elif settings.coef_prune == "topk":
        k = min(settings.coef_topk, coef.shape[-1])
        values, idx = torch.topk(coef, k, dim=-1)
        pruned = torch.zeros_like(coef).scatter(-1, idx, values)
    else:
        pruned = coef
    if settings.coef_keep_best:
        best = coef.argmax(dim=-1, keepdim=True)
        pruned = pruned.scatter(-1, best, coef.gather(-1, best))
    return round_coefficients(pruned) if settings.exact_scores else pruned


def prune_basis_for(w_up: torch.Tensor, settings: SparsifinerSettings) -> torch.Tensor:
    """The settings' basis pruning, then the value grid (``exact_scores``)."""
    pruned = prune_basis_tensor(w_up, settings.basis_threshold, settings.basis_prune)
    return quantize_basis(pruned) if settings.exact_scores else pruned


class ConnectivityPredictor(nn.Module):
    """Predicts basis coefficients and holds the basis of one attention block."""

    def __init__(self, num_tokens: int, num_heads: int, head_dim: int, settings: SparsifinerSettings,
                 num_prefix_tokens: int = 1):
        super().__init__()
        self.settings = settings
        self.num_tokens = num_tokens
        self.num_prefix_tokens = num_prefix_tokens
        self.reduced_dim = max(1, head_dim // settings.reduce_c_factor)
        rank = settings.n_down
        self.scale = (self.reduced_dim if settings.score_scale == "reduced" else num_heads) ** -0.5
        self.proj_q = nn.Linear(head_dim, self.reduced_dim)
        self.proj_k = nn.Linear(head_dim, self.reduced_dim)
        self.p_down = nn.Parameter(torch.zeros(num_tokens, rank))
        self.w_up = None if settings.shared_projection else nn.Parameter(torch.zeros(rank, num_tokens))
        # The pruned basis, fixed once by prune_basis_(); a buffer so it is saved and exported
        # as a constant. basis_is_pruned says whether it is valid.
        self.register_buffer("pruned_basis", torch.zeros(rank, num_tokens))
        self.register_buffer("basis_is_pruned", torch.tensor(False))
        # A Python mirror of basis_is_pruned: torch.export and torch.compile cannot branch on a
        # buffer's value (bool() of a traced tensor is data-dependent), so forward reads this.
        self._pruned = False
        # Coefficients to use instead of the computed ones (validation injects a runtime's own);
        # the computed ones are then kept in computed_coef for comparison.
        self.coef_override: torch.Tensor | None = None
        self.computed_coef: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(lambda module, _keys: module._sync_pruned_flag())
        self.reset_parameters()

    def _sync_pruned_flag(self) -> None:
        self._pruned = bool(self.basis_is_pruned)

    def reset_parameters(self) -> None:
        # Imported here: importing timm at module level would run the timm hook's registration
        # while sparsifiner.layers is half-initialised (a circular import).
        from timm.layers import trunc_normal_

        for lin in (self.proj_q, self.proj_k):
            trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        trunc_normal_(self.p_down, std=0.02)
        if self.w_up is not None:
            trunc_normal_(self.w_up, std=0.02)
        self.pruned_basis.zero_()
        self.basis_is_pruned.fill_(False)
        self._pruned = False

    @property
    def basis(self) -> torch.Tensor:
        """The unpruned basis W_up [R, N] (P_down^T with a shared projection)."""
        return self.p_down.t() if self.w_up is None else self.w_up

    def sparse_basis(self) -> torch.Tensor:
        """The pruned basis: the stored one after prune_basis_(), else pruned on the fly."""
        if self._pruned:
            return self.pruned_basis
        return prune_basis_for(self.basis, self.settings)

    @torch.no_grad()
    def prune_basis_(self) -> float:
        """Apply tau_basis to W_up once (between the phases); returns the basis sparsity."""
        pruned = prune_basis_for(self.basis, self.settings)
        self.pruned_basis.copy_(pruned)
        self.basis_is_pruned.fill_(True)
        self._pruned = True
        return float((pruned == 0).float().mean())

    def coefficients(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Unpruned basis coefficients A_down [B, H, N-c, R] from q, k [B, H, N, d]."""
        c = self.num_prefix_tokens
        q_r = self.proj_q(q[:, :, c:])
        k_r = self.proj_k(k)
        k_low = torch.matmul(k_r.transpose(-1, -2), self.p_down.to(k_r.dtype))  # [B, H, d_r, R]
        logits = torch.matmul(q_r, k_low).float() * self.scale
        return torch.softmax(logits, dim=-1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, sparse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(coef, basis): pruned factors when ``sparse``, else the unpruned ones (phase 1)."""
        coef = self.coefficients(q, k)
        if sparse:
            coef = prune_coefficients(coef, self.settings)
            if self.coef_override is not None:
                self.computed_coef = coef
                coef = self.coef_override.to(device=coef.device, dtype=coef.dtype)
            return coef, self.sparse_basis()
        return coef, self.basis
