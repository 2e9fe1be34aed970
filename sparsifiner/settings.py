"""Model settings: every knob of the connectivity predictor and the budgeted attention.

One frozen dataclass, validated on construction. Only the CLI turns flags or a YAML
recipe into it; checkpoints store it as JSON. Defaults follow METHOD.md (the paper's
supplementary), and where the paper and the authors' code differ the choice is a
setting whose docstring names both.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from sparsifiner.errors import SparsifinerError

COEF_PRUNE_MODES = ("threshold", "topk", "none")
BASIS_PRUNE_MODES = ("abs", "signed")
SCORE_SCALES = ("reduced", "heads")
BUDGET_TOKENS = ("patches", "all")
MODES = ("dense", "sparse")
SELECTIONS = ("row", "tile", "two_level")  # op_spec.SELECTION_MODES
# The model name every command accepts for the bundled digits ViT (sparsifiner.model.zoo).
DEMO_NAME = "demo"
# What saved settings written before a knob existed meant (from_dict(saved=True) fills them in).
LEGACY_DEFAULTS = {"exact_scores": False, "coef_keep_best": False}


@dataclass(frozen=True)
class SparsifinerSettings:
    """Settings of the connectivity mask predictor and the sparse attention.

    keep_rate: share of keys each non-CLS query keeps, in (0, 1]; ignored when
        ``budget`` is given.
    budget: explicit number of keys per non-CLS query (1 <= budget <= N).
    budget_tokens: what keep_rate multiplies. "patches": ceil(keep_rate * patch
        tokens), the paper's convention (DeiT-S at 0.25 -> 49). "all":
        ceil(keep_rate * N), the authors' code (-> 50).
    n_down: rank R of the token reduction P_down [N, R] and the basis W_up [R, N]
        (supplementary: 32).
    reduce_c_factor: channel reduction of q and k, d_r = head_dim // factor (2).
    basis_threshold: tau_basis; basis entries with |w| <= tau become 0 (0.01).
    basis_prune: "abs" keeps |w| (the authors' code thresholds basis.abs());
        "signed" keeps w with its sign.
    coef_prune: coefficient pruning in sparse mode: "threshold" zeroes A_down
        entries <= coef_threshold (0.05, the paper); "topk" keeps the coef_topk (8)
        largest per row (the released config); "none" keeps all.
    shared_projection: use P_down^T as the basis instead of a separate W_up.
    score_scale: scale of the predictor's low-rank logits: "reduced" is d_r ** -0.5
        (principled), "heads" is num_heads ** -0.5 (the authors' code).
    exact_scores: put the pruned coefficients and basis on value grids so the
        connectivity scores are exact in any summation order and every runtime selects
        the same keys (``sparsifiner.ops.grid``); False keeps the authors' float scores.
        Checkpoints and exports saved before this setting existed load with False.
    coef_keep_best: keep each row's largest coefficient even when pruning would drop
        it, so no query row is left without connectivity scores.
    selection: how keys are selected (``sparsifiner.ops.tile``). "row": each query keeps
        its own top-B (the paper). "tile": the queries of a tile_rows x tile_cols tile of
        the patch grid share the tile's top-C keys by summed scores (C keys per query;
        an opt-in departure from the paper, for kernels that run dense MMA over a shared
        key set). "two_level": the tile's top-C, then each query's own top-B inside it.
    tile_rows, tile_cols: the tile shape on the patch grid (8 x 8: 64 query rows, the
        kernel's MMA tile; edge tiles are partial). With exact_scores a tile holds at most
        op_spec.max_exact_tile_rows(n_down) rows (127 at R = 32).
    tile_budget: C, keys per tile; overrides tile_factor.
    tile_factor: C = ceil(tile_factor x budget), at most N.
    """

    keep_rate: float = 0.25
    budget: Optional[int] = None
    budget_tokens: str = "patches"
    n_down: int = 32
    reduce_c_factor: int = 2
    basis_threshold: float = 0.01
    basis_prune: str = "abs"
    coef_prune: str = "threshold"
    coef_threshold: float = 0.05
    coef_topk: int = 8
    shared_projection: bool = False
    score_scale: str = "reduced"
    exact_scores: bool = True
    coef_keep_best: bool = False
    selection: str = "row"
    tile_rows: int = 8
    tile_cols: int = 8
    tile_budget: Optional[int] = None
    tile_factor: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.keep_rate, (int, float)) and 0 < self.keep_rate <= 1):
            raise SparsifinerError(f"keep_rate must be in (0, 1], got {self.keep_rate}")
        if self.budget is not None and (not isinstance(self.budget, int) or self.budget < 1):
            raise SparsifinerError(f"budget must be a positive integer, got {self.budget}")
        _check_choice("budget_tokens", self.budget_tokens, BUDGET_TOKENS)
        _check_choice("basis_prune", self.basis_prune, BASIS_PRUNE_MODES)
        _check_choice("coef_prune", self.coef_prune, COEF_PRUNE_MODES)
        _check_choice("score_scale", self.score_scale, SCORE_SCALES)
        if self.n_down < 1:
            raise SparsifinerError(f"n_down must be >= 1, got {self.n_down}")
        if self.reduce_c_factor < 1:
            raise SparsifinerError(f"reduce_c_factor must be >= 1, got {self.reduce_c_factor}")
        if self.basis_threshold < 0 or self.coef_threshold < 0:
            raise SparsifinerError("basis_threshold and coef_threshold must be >= 0")
        if self.coef_topk < 1:
            raise SparsifinerError(f"coef_topk must be >= 1, got {self.coef_topk}")
        _check_choice("selection", self.selection, SELECTIONS)
        for name in ("tile_rows", "tile_cols"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SparsifinerError(f"{name} must be a positive integer, got {value!r}")
        if self.tile_budget is not None and (not isinstance(self.tile_budget, int) or self.tile_budget < 1):
            raise SparsifinerError(f"tile_budget must be a positive integer, got {self.tile_budget!r}")
        if not (isinstance(self.tile_factor, (int, float)) and self.tile_factor > 0):
            raise SparsifinerError(f"tile_factor must be > 0, got {self.tile_factor!r}")
        if self.selection != "row" and self.exact_scores:
            from sparsifiner.op_spec import max_exact_tile_rows

            limit = max_exact_tile_rows(self.n_down)
            if self.tile_rows * self.tile_cols > limit:
                raise SparsifinerError(f"a {self.tile_rows}x{self.tile_cols} tile has more than {limit} rows, the most "
                                       f"whose summed scores stay exact at n_down {self.n_down}: use a smaller tile")

    def resolve_budget(self, num_tokens: int, num_prefix_tokens: int = 1) -> int:
        """The number of keys kept per non-CLS query for a sequence of num_tokens."""
        if self.budget is not None:
            budget = self.budget
        else:
            base = num_tokens - num_prefix_tokens if self.budget_tokens == "patches" else num_tokens
            # round() first so 0.25 * 196 = 49.000000001 cannot become 50
            budget = max(1, math.ceil(round(self.keep_rate * base, 9)))
        if budget > num_tokens:
            raise SparsifinerError(
                f"budget {budget} is above the number of keys ({num_tokens}): pass --budget <= {num_tokens}"
            )
        return budget

    def resolve_tile_budget(self, num_tokens: int, num_prefix_tokens: int = 1) -> int:
        """C, the keys kept per tile (tile and two_level selection) for a sequence of num_tokens."""
        budget = self.resolve_budget(num_tokens, num_prefix_tokens)
        if self.tile_budget is not None:
            tile = self.tile_budget
        else:
            tile = min(num_tokens, max(1, math.ceil(round(self.tile_factor * budget, 9))))
        if tile > num_tokens:
            raise SparsifinerError(f"tile budget {tile} is above the number of keys ({num_tokens}): "
                                   f"use a tile budget <= {num_tokens}")
        if self.selection == "two_level" and tile < budget:
            raise SparsifinerError(f"two_level selection needs tile budget >= budget, got {tile} < {budget}")
        return tile

    def check_tokens(self, num_tokens: int) -> None:
        """Check the settings fit a sequence of num_tokens (raises SparsifinerError)."""
        if self.n_down > num_tokens:
            raise SparsifinerError(
                f"n_down {self.n_down} is above the number of tokens ({num_tokens}): use --n-down <= {num_tokens}"
            )
        self.resolve_budget(num_tokens)
        if self.selection != "row":
            self.resolve_tile_budget(num_tokens)

    def replace(self, **changes) -> "SparsifinerSettings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, saved: bool = False) -> "SparsifinerSettings":
        """Settings from a dict; ``saved``: it was written by an artifact (a checkpoint, an
        export's metadata), so a knob it lacks takes the behaviour of before the knob existed."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise SparsifinerError(f"unknown Sparsifiner settings: {', '.join(sorted(unknown))}")
        return cls(**({**LEGACY_DEFAULTS, **data} if saved else data))


def _check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise SparsifinerError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
