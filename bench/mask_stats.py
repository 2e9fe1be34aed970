"""Statistics of TopKMaskedAttention masks: trained models against the benchmark's inputs.

    python bench/mask_stats.py                                  # benchmark inputs only
    python bench/mask_stats.py --checkpoint runs/demo0/phase2.safetensors --images 64

For each setting (a trained block, or bench/attention.py's synthetic inputs at some N and
budget) it reports what decides the cost of an exact top-B kernel (KERNEL_REVIEW.md s. 2):
- exact-zero and negative shares of the connectivity scores, ties at the B-th position;
- coefficient support: nonzeros per row, and the union of the supports over the rows of
  a query tile (64 consecutive rows = raster, or an 8x8 patch square = 2d; 16-row warp
  tiles as 2 patch rows x 8 or 4x4);
- key unions: |union of the tile's top-B key sets| / N for the same tilings;
- spatial coherence: the overlap (IoU) of the key sets of horizontally adjacent patches;
- basis density and the exponent spread of its columns (the value grid).
Coefficients and basis are first put on the exact-selection value grid
(``quantise_to_grid``), as the model now stores them. Writes JSON (``--json``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TILINGS = ("raster64", "2d8x8", "raster16", "2d2x8", "2d4x4")


# ------------------------------------------------------------------ value grid


def quantise_to_grid(coef: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact-selection value grid (bench/attention.py quantise_to_grid), in fp32."""
    sys.path.insert(0, str(HERE))
    import attention

    return attention.quantise_to_grid(torch, coef, basis)


def on_grid(coef: torch.Tensor, basis: torch.Tensor) -> bool:
    """Whether (coef, basis) already satisfy the value grid's precondition."""
    c2, b2 = quantise_to_grid(coef, basis)
    return bool(torch.equal(c2, coef.float()) and torch.equal(b2, basis.float()) and coef.min() >= 0 and coef.max() <= 1)


# ------------------------------------------------------------------ statistics


def _tile_groups(side: int, tiling: str) -> list[torch.Tensor]:
    """Row indices (into the side*side patch rows) of each tile of a tiling."""
    m = side * side
    idx = torch.arange(m)
    if tiling.startswith("raster"):
        size = int(tiling[len("raster"):])
        return [idx[i:i + size] for i in range(0, m, size)]
    th, tw = {"2d8x8": (8, 8), "2d2x8": (2, 8), "2d4x4": (4, 4)}[tiling]
    grid = idx.reshape(side, side)
    return [grid[y:y + th, x:x + tw].flatten() for y in range(0, side, th) for x in range(0, side, tw)]


def mask_stats(coef: torch.Tensor, basis: torch.Tensor, budget: int, cls_rows: int = 1) -> dict:
    """Statistics of one block's inputs: coef [B, H, M, R] (M = N - cls_rows = side^2),
    basis [R, N]. Scores in fp32 (exact on the value grid)."""
    from sparsifiner.ops.reference import topk_mask

    coef = coef.float()
    basis = basis.float()
    b, h, m, r = coef.shape
    n = basis.shape[1]
    side = math.isqrt(m)
    scores = torch.matmul(coef, basis)  # [B, H, M, N]
    mask = topk_mask(scores, budget)
    out = {"n": n, "budget": budget, "rank": r, "rows": b * h * m}
    out["zero_share"] = (scores == 0).float().mean().item()
    out["negative_share"] = (scores < 0).float().mean().item()
    kth = scores.sort(dim=-1, descending=True).values[..., budget - 1:budget]
    out["bth_score_zero_rows"] = (kth == 0).float().mean().item()
    above = (scores > kth).sum(-1)
    equal = (scores == kth).sum(-1)
    out["tie_at_bth_rows"] = ((above < budget) & (above + equal > budget)).float().mean().item()
    nnz = (coef != 0).sum(-1).float()
    out["coef_nnz_per_row"] = {"mean": nnz.mean().item(), "p50": nnz.median().item(), "max": nnz.max().item()}
    out["basis_density"] = (basis != 0).float().mean().item()
    colmax = basis.abs().amax(0)
    exps = torch.ceil(torch.log2(colmax[colmax > 0] / 127)) if (colmax > 0).any() else torch.zeros(1)
    out["basis_exponent_spread"] = (exps.max() - exps.min()).item()
    if side * side != m:
        out["grid"] = None
        return out
    out["grid"] = side
    unions, supports = {}, {}
    for tiling in TILINGS:
        groups = [g for g in _tile_groups(side, tiling) if len(g)]
        u = torch.stack([mask[..., g, :].any(dim=-2).float().mean(-1) for g in groups], -1)  # [B, H, tiles]
        s = torch.stack([(coef[..., g, :] != 0).any(dim=-2).float().sum(-1) for g in groups], -1)
        unions[tiling] = u.mean().item()
        supports[tiling] = {"mean": s.mean().item(), "p50": s.median().item(),
                            "share_le_16": (s <= 16).float().mean().item()}
    out["union_fraction"] = unions
    out["tile_coef_support"] = supports
    grid = mask.reshape(b, h, side, side, n)
    inter = (grid[:, :, :, 1:] & grid[:, :, :, :-1]).sum(-1).float()
    union = (grid[:, :, :, 1:] | grid[:, :, :, :-1]).sum(-1).float()
    out["neighbour_iou"] = (inter / union.clamp(min=1)).mean().item()
    return out


# ------------------------------------------------------------------ sources


def trained_inputs(checkpoint: Path, images: int, seed: int = 0):
    """Per block: (coef, basis, budget, cls_rows) captured from a trained model on the digits."""
    import sparsifiner
    from sparsifiner.data import build_datasets

    try:  # the model loader's name moved between versions
        from sparsifiner.model.source import load_checkpoint as load
    except ImportError:
        from sparsifiner.model.io import load_sparsifiner as load
    model = load(checkpoint)
    model.eval()
    _, val = build_datasets("digits", model, augment=False)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(val), generator=gen)[:images].tolist()
    x = torch.stack([val[i][0] for i in pick])
    with torch.no_grad(), sparsifiner.collect_aux(model) as records:
        model(x)
    blocks = []
    for rec in records:
        coef, basis, mask = rec["coef"], rec["basis"], rec["mask"]
        budget = int(mask[0, 0, 0].sum())
        cls_rows = basis.shape[1] - coef.shape[-2]
        blocks.append((coef, basis, budget, cls_rows))
    return blocks


def bench_inputs(n: int, budget: int, mode: str, coef_mode: str = "threshold", heads: int = 6, rank: int = 32,
                 seed: int = 0):
    """bench/attention.py make_inputs on the CPU (one image, `heads` heads)."""
    sys.path.insert(0, str(HERE))
    import attention

    _, _, _, coef, basis = attention.make_inputs(torch, 1, heads, n, 8, rank, torch.float32, mode, coef_mode, seed,
                                                 dev="cpu")
    return coef, basis


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="a trained Sparsifiner checkpoint (.safetensors)")
    p.add_argument("--images", type=int, default=64, help="validation digits to capture masks on")
    p.add_argument("--ns", type=int, nargs="+", default=[197, 1025, 4097])
    p.add_argument("--keep-rate", type=float, default=0.25)
    p.add_argument("--fixed-budget", type=int, default=49)
    p.add_argument("--inputs", nargs="+", default=["coherent", "random"])
    p.add_argument("--coef", choices=["threshold", "top8"], default="threshold", help="coefficient pruning of the bench inputs")
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args(argv)


def _fmt(rec: dict) -> str:
    head = (f"N={rec['n']:5d} B={rec['budget']:5d} zero={rec['zero_share']:.2f} neg={rec['negative_share']:.2f} Bth0={rec['bth_score_zero_rows']:.2f} "
            f"tieB={rec['tie_at_bth_rows']:.3f} coef/row={rec['coef_nnz_per_row']['mean']:.1f} "
            f"basis={rec['basis_density']:.2f} espread={rec['basis_exponent_spread']:.0f}")
    if rec.get("grid"):
        u = rec["union_fraction"]
        head += (f" | union raster64={u['raster64']:.3f} 2d8x8={u['2d8x8']:.3f} raster16={u['raster16']:.3f} "
                 f"2d2x8={u['2d2x8']:.3f} 2d4x4={u['2d4x4']:.3f} | tile support 2d={rec['tile_coef_support']['2d8x8']['mean']:.1f}"
                 f" raster={rec['tile_coef_support']['raster64']['mean']:.1f} | nbr IoU={rec['neighbour_iou']:.2f}")
    return head


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    result = {"trained": [], "bench": []}
    if args.checkpoint:
        for i, (coef, basis, budget, cls_rows) in enumerate(trained_inputs(args.checkpoint, args.images)):
            gc, gb = quantise_to_grid(coef, basis)
            rec = {"block": i, "checkpoint": str(args.checkpoint), **mask_stats(gc, gb, budget, cls_rows)}
            result["trained"].append(rec)
            print(f"trained block {i}: {_fmt(rec)}")
    for mode in args.inputs:
        for n in args.ns:
            budgets = {max(1, math.ceil(args.keep_rate * (n - 1))), min(args.fixed_budget, n)}
            coef, basis = bench_inputs(n, 1, mode, args.coef, heads=args.heads)
            for budget in sorted(budgets):
                rec = {"inputs": mode, **mask_stats(coef, basis, budget)}
                result["bench"].append(rec)
                print(f"bench {mode:8s}: {_fmt(rec)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
