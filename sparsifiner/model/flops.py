"""Multiply-accumulate counts of a dense ViT and of its Sparsifiner, per block.

Counted per image, in MACs (the paper's "FLOPs" are MACs: dense DeiT-S = 4.6 G).
Per block, with N tokens, c CLS rows, embed C, attention width A = H d, MLP hidden M,
rank R, reduced head dim d_r and budget B:
  qkv + proj      N C 3A + N A C
  MLP             2 N C M
  MHSA (dense)    2 H N^2 d                 (q k^T and attn v: the paper's MHSA figure)
  MHSA (sparse)   2 H (c N + (N-c) B) d
  predictor       H (2N-c) d d_r            channel reduction of q and k
                + H d_r N R + H (N-c) d_r R  token reduction and coefficients
                + H (N-c) (rho_c R)(rho_b N) scores as a sparse x sparse product
rho_c and rho_b are the nonzero shares of the pruned coefficients and basis:
measured (basis, from a pruned checkpoint) or the paper's figures (13 % and 9.2 %).
Softmax, top-k selection, norms and biases are not counted.

Tile-shared selection (settings.selection, T tiles, tile budget C) changes two terms:
  MHSA            2 H (c N + (N-c) K) d     K = C keys per row (tile) or B (two_level)
  scores (tile)   H (N-c) rho_c R           sum of each tile's coefficient rows
                + H T R (rho_b N)           tile scores (summed coefficients counted dense)
  two_level adds  H (N-c) (rho_c R)(rho_b C) each row's scores of its tile's C keys
So tile selection at C costs C/B of row selection's QK^T and AV at B, and its scores cost
about T/(N-c) of the per-row scores.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Union

from sparsifiner.errors import SparsifinerError
from sparsifiner.settings import SparsifinerSettings

if TYPE_CHECKING:
    from sparsifiner.model.source import ModelSource

PAPER_COEF_DENSITY = 0.13  # supplementary: about 87 % of A_down is zero after tau_coef = 0.05
PAPER_BASIS_DENSITY = 1 - 0.908  # Table 1, L2: 90.8 % basis sparsity at tau_basis = 0.01


def _default_coef_density(settings: SparsifinerSettings) -> float:
    if settings.coef_prune == "topk":
        return min(1.0, settings.coef_topk / settings.n_down)
    return PAPER_COEF_DENSITY if settings.coef_prune == "threshold" else 1.0


def selection_macs(n: int, c: int, heads: int, rank: int, budget: int, coef_density: float, basis_density: float,
                   selection: str = "row", tiles: int = 0, tile_budget: int = 0) -> tuple[int, float]:
    """(keys per non-CLS row, MACs of the connectivity scores) of one block's selection."""
    row_scores = heads * (n - c) * (coef_density * rank) * (basis_density * n)
    if selection == "row":
        return budget, row_scores
    tile_scores = heads * (n - c) * coef_density * rank + heads * tiles * rank * basis_density * n
    if selection == "tile":
        return tile_budget, tile_scores
    return budget, tile_scores + heads * (n - c) * (coef_density * rank) * (basis_density * tile_budget)


def block_macs(n: int, c: int, embed: int, heads: int, head_dim: int, hidden: int, rank: int,
               reduced: int, budget: int, coef_density: float, basis_density: float, selection: str = "row",
               tiles: int = 0, tile_budget: int = 0) -> dict:
    """MACs of one block, dense and Sparsifiner, split by part (``tiles`` and ``tile_budget``: tile selection)."""
    attn_dim = heads * head_dim
    qkv_proj = n * embed * 3 * attn_dim + n * attn_dim * embed
    mlp = 2 * n * embed * hidden
    mhsa_dense = 2 * heads * n * n * head_dim
    keys, scores = selection_macs(n, c, heads, rank, budget, coef_density, basis_density, selection, tiles,
                                  tile_budget)
    mhsa_sparse = 2 * heads * (c * n + (n - c) * keys) * head_dim
    predictor = (heads * (2 * n - c) * head_dim * reduced + heads * reduced * n * rank
                 + heads * (n - c) * reduced * rank + scores)
    dense = {"mhsa": mhsa_dense, "qkv_proj": qkv_proj, "mlp": mlp, "total": mhsa_dense + qkv_proj + mlp}
    sparse = {"mhsa": mhsa_sparse, "predictor": predictor, "qkv_proj": qkv_proj, "mlp": mlp,
              "total": mhsa_sparse + predictor + qkv_proj + mlp}
    return {"dense": dense, "sparsifiner": sparse}


def count_flops(source: Union[ModelSource, str], settings: Optional[SparsifinerSettings] = None, *,
                img_size: Optional[int] = None, coef_density: Optional[float] = None,
                basis_density: Optional[float] = None) -> dict:
    """Per-block and total MACs for the dense model and its Sparsifiner (see module doc).

    source: a ModelSource, or a timm model name (with ``settings`` and ``img_size``). A
    checkpoint at another image size is resized; its pruned basis gives the basis density.
    """
    from sparsifiner.model.source import as_source, load_sparsifiner_model
    from sparsifiner.model.sparsify import budget_of, sparse_layers
    from sparsifiner.ops.tile import tile_index

    source = as_source(source, settings, img_size)
    model, _ = load_sparsifiner_model(source, resize=True, prune_random=False)
    settings = model.sparsifiner_settings
    model_name = model.sparsifiner_arch["model"]
    basis_source = "given" if basis_density is not None else "paper (Table 1, L2)"
    preds = [layer.predictor for layer in sparse_layers(model)]
    if source.checkpoint is not None and basis_density is None and all(bool(p.basis_is_pruned) for p in preds):
        basis_density = sum(float((p.pruned_basis != 0).float().mean()) for p in preds) / len(preds)
        basis_source = "measured from checkpoint"
    for name, value in (("coef_density", coef_density), ("basis_density", basis_density)):
        if value is not None and not 0 <= value <= 1:
            raise SparsifinerError(f"{name} must be in [0, 1], got {value}")
    coef_source = "given" if coef_density is not None else f"default for coef_prune={settings.coef_prune}"
    coef_density = _default_coef_density(settings) if coef_density is None else coef_density
    basis_density = PAPER_BASIS_DENSITY if basis_density is None else basis_density

    n = model.patch_embed.num_patches + model.num_prefix_tokens
    c = model.num_prefix_tokens
    budget = budget_of(model)
    blocks = []
    for i, blk in enumerate(model.blocks):
        attn = blk.attn
        tiles = tile_index(n - c, attn.selection)[1] if attn.selection is not None else 0
        macs = block_macs(n, c, model.embed_dim, attn.num_heads, attn.head_dim, blk.mlp.fc1.out_features,
                          settings.n_down, attn.predictor.reduced_dim, attn.budget, coef_density, basis_density,
                          settings.selection, tiles, attn.tile_budget or 0)
        blocks.append({"block": i, "keys_per_row": attn.keys_per_row, **macs})
    p = model.patch_embed.proj
    other = model.patch_embed.num_patches * p.out_channels * p.in_channels * math.prod(p.kernel_size)
    head = getattr(model, "head", None)
    other += getattr(head, "in_features", 0) * getattr(head, "out_features", 0)
    total = {side: {k: sum(b[side][k] for b in blocks) for k in blocks[0][side]} for side in ("dense", "sparsifiner")}
    for side in total:
        total[side]["other"] = other
        total[side]["total"] += other
    d, s = total["dense"], total["sparsifiner"]
    return {
        "model": model_name,
        "img_size": list(model.patch_embed.img_size),
        "tokens": n,
        "budget": budget,
        "keep_rate": settings.keep_rate if settings.budget is None else None,
        "selection": settings.selection,
        "tile": None if settings.selection == "row" else [settings.tile_rows, settings.tile_cols],
        "tile_budget": sparse_layers(model)[0].tile_budget,
        "keys_per_row": sparse_layers(model)[0].keys_per_row,
        "assumptions": {"coef_density": coef_density, "coef_source": coef_source,
                        "basis_density": basis_density, "basis_source": basis_source},
        "blocks": blocks,
        "total": total,
        "reduction": {
            "mhsa": 1 - (s["mhsa"] + s["predictor"]) / d["mhsa"],
            "mhsa_without_predictor": 1 - s["mhsa"] / d["mhsa"],
            "model": 1 - s["total"] / d["total"],
        },
    }


def format_flops(data: dict) -> str:
    """A per-block table in MMACs, then the totals in GMACs and the reductions."""
    m = 1e6
    selection = data.get("selection", "row")
    tiles = "" if selection == "row" else (f"  selection={selection} {data['tile'][0]}x{data['tile'][1]} "
                                           f"C={data['tile_budget']}  keys/row={data['keys_per_row']}")
    lines = [
        f"{data['model']}  img {data['img_size'][0]}x{data['img_size'][1]}  N={data['tokens']}  budget={data['budget']}"
        + tiles,
        f"{'block':>5} {'dense MHSA':>11} {'sparse MHSA':>12} {'predictor':>10} {'qkv+proj':>9} {'MLP':>8} "
        f"{'dense':>8} {'sparsif.':>9}   (MMACs)",
    ]
    for b in data["blocks"]:
        d, s = b["dense"], b["sparsifiner"]
        lines.append(f"{b['block']:>5} {d['mhsa'] / m:>11.2f} {s['mhsa'] / m:>12.2f} {s['predictor'] / m:>10.2f} "
                     f"{d['qkv_proj'] / m:>9.2f} {d['mlp'] / m:>8.2f} {d['total'] / m:>8.2f} {s['total'] / m:>9.2f}")
    d, s = data["total"]["dense"], data["total"]["sparsifiner"]
    r, a = data["reduction"], data["assumptions"]
    lines += [
        f"total GMACs: dense {d['total'] / 1e9:.3f}  sparsifiner {s['total'] / 1e9:.3f}  "
        f"(MHSA {d['mhsa'] / 1e9:.3f} -> {s['mhsa'] / 1e9:.3f} + predictor {s['predictor'] / 1e9:.3f}; "
        f"patch embed + head {d['other'] / 1e9:.3f})",
        f"MHSA reduction: {100 * r['mhsa']:.1f} % with the predictor, {100 * r['mhsa_without_predictor']:.1f} % "
        f"without; whole model {100 * r['model']:.1f} %",
        f"assumed nonzero shares: coefficients {a['coef_density']:.3f} ({a['coef_source']}), "
        f"basis {a['basis_density']:.3f} ({a['basis_source']})",
    ]
    return "\n".join(lines)
