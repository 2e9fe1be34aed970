"""Selection study on the demo: exact scores and the fill rule for rows with few positive scores.

For each seed, one teacher (or one ``--teacher`` for all seeds) and one phase 1, then phase 2 once per variant and
coefficient-pruning mode, each evaluated on the 360 val digits (top-1, attention-mass
recall against the oracle, mask density, coefficient sparsity, rows left without any
coefficient):

  float_index     today's behaviour: float scores, ties at the B-th score to the lower key
                  index (CLS and the top-left patches first)            ("before")
  exact_index     exact scores (sparsifiner.ops.grid), lower index first
  exact_nearest   exact scores, ties to the key nearest the query on the patch grid (CLS
                  first), then the lower index: a candidate fill rule, patched into the
                  reference here only
  exact_keepbest  exact scores, each row keeps its largest coefficient even below the
                  pruning threshold (threshold mode only: top-k never empties a row)

The two fill-rule candidates run on the first ``--fill-seeds`` seeds (threshold mode);
float_index and exact_index run on every seed in both modes.

    python bench/selection_study.py --seeds 0 1 2 3 4 --output runs/selection_study [--teacher T.safetensors]

Writes bench/results/selection_study.json (per run and mean/std over seeds) and prints
the table. Runs are resumable: finished phases are reused.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "float_index": {"exact_scores": False},
    "exact_index": {"exact_scores": True},
    "exact_nearest": {"exact_scores": True},
    "exact_keepbest": {"exact_scores": True, "coef_keep_best": True},
}
MODES = ("threshold", "topk")
# The fill-rule candidates run in threshold mode (top-k never empties a row) on the first
# --fill-seeds seeds; before/after (float_index vs exact_index) runs on every seed and mode.
FILL_VARIANTS = ("exact_nearest", "exact_keepbest")
METRICS = ("top1", "recall", "oracle_recall", "mask_density", "coef_sparsity", "empty_coef_rows")


def nearest_fill_topk_mask(scores, budget: int, cls_rows: int = 1):
    """Top-B by (score descending, grid distance to the query ascending, key index ascending)."""
    import math

    import torch

    rows, keys = scores.shape[-2], scores.shape[-1]
    side = math.isqrt(rows)
    if side * side != rows or keys != rows + cls_rows:
        raise ValueError(f"nearest fill needs a square patch grid, got {rows} rows and {keys} keys")
    q = torch.arange(rows, device=scores.device)
    k = (torch.arange(keys, device=scores.device) - cls_rows).clamp(min=0)
    dist = (q[:, None] // side - k[None] // side) ** 2 + (q[:, None] % side - k[None] % side) ** 2
    dist = torch.where(torch.arange(keys, device=scores.device)[None] < cls_rows, -1, dist)
    order = torch.argsort((dist + 1) * keys + torch.arange(keys, device=scores.device)[None], dim=-1)
    order = order.expand(*scores.shape)
    top = torch.sort(scores.gather(-1, order), dim=-1, descending=True, stable=True).indices[..., :budget]
    return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(-1, order.gather(-1, top), True)


@contextlib.contextmanager
def nearest_fill():
    """Use the nearest-patch fill in the reference and the layers (training and evaluation)."""
    import sparsifiner.layers.sparse_attention as layer_module
    import sparsifiner.ops.reference as reference

    saved = reference.topk_mask, layer_module.topk_mask
    reference.topk_mask = layer_module.topk_mask = nearest_fill_topk_mask
    try:
        yield
    finally:
        reference.topk_mask, layer_module.topk_mask = saved


def settings_for(seed: int, **sparsifiner):
    from sparsifiner.train.recipe import build_train_settings, load_recipe

    overrides = {"seed": seed, **{f"sparsifiner.{k}": v for k, v in sparsifiner.items()}}
    return build_train_settings(load_recipe("demo"), overrides)


def run_seed(seed: int, output: Path, progress: bool, teacher: str | None = None, fill: bool = True,
             modes=MODES, variants=tuple(VARIANTS)) -> list[dict]:
    from sparsifiner.train.evaluate import evaluate_checkpoints
    from sparsifiner.train.runner import artifact_path, run_training

    base = output / f"seed{seed}"
    # Finished phases are skipped on a rerun (resume).
    if teacher is None:
        run_training(settings_for(seed), "teacher", base, resume=True, progress=progress)
        teacher = str(artifact_path(base, "teacher"))
    run_training(settings_for(seed).replace(checkpoint=teacher), "1", base, resume=True, progress=progress)
    phase1 = str(artifact_path(base, "phase1"))
    rows = []
    for mode in modes:
        for variant, knobs in VARIANTS.items():
            if variant not in variants or variant in FILL_VARIANTS and (mode != "threshold" or not fill):
                continue
            folder = base / f"{mode}_{variant}"
            settings = settings_for(seed, coef_prune=mode, **knobs).replace(checkpoint=phase1)
            with nearest_fill() if variant == "exact_nearest" else contextlib.nullcontext():
                if not artifact_path(folder, "phase2").exists():
                    run_training(settings, "2", folder, resume=True, progress=progress)
                row = evaluate_checkpoints([str(artifact_path(folder, "phase2"))], "digits")[0]
            rows.append({"seed": seed, "mode": mode, "variant": variant, **{m: row[m] for m in METRICS}})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["mode"], row["variant"]), []).append(row)
    out = []
    for (mode, variant), group in groups.items():
        entry = {"mode": mode, "variant": variant, "seeds": len(group)}
        for metric in METRICS:
            values = [r[metric] for r in group]
            entry[metric] = statistics.fmean(values)
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def format_table(summary: list[dict]) -> str:
    lines = [f"{'mode':<10} {'variant':<15} {'seeds':>5} {'top-1 %':>14} {'recall %':>13} {'oracle %':>9} "
             f"{'mask dens %':>11} {'coef sp %':>9} {'empty rows %':>12}"]
    for e in summary:
        lines.append(f"{e['mode']:<10} {e['variant']:<15} {e['seeds']:>5} {e['top1']:>7.2f} ± {e['top1_std']:4.2f} "
                     f"{100 * e['recall']:>6.2f} ± {100 * e['recall_std']:4.2f} {100 * e['oracle_recall']:>9.2f} "
                     f"{100 * e['mask_density']:>11.2f} {100 * e['coef_sparsity']:>9.2f} "
                     f"{100 * e['empty_coef_rows']:>12.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--output", default="runs/selection_study")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "selection_study.json"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fill-seeds", type=int, default=3, help="Seeds (the first ones) that also run the fill rules")
    parser.add_argument("--teacher", default=None,
                        help="A trained dense teacher shared by all seeds (default: train one per seed)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = []
    for i, seed in enumerate(args.seeds):
        rows += run_seed(seed, Path(args.output), args.progress, args.teacher, fill=i < args.fill_seeds,
                         modes=args.modes, variants=args.variants)
    summary = summarise(rows)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"command": " ".join(["python", "bench/selection_study.py", *sys.argv[1:]]),
                                              "runs": rows, "summary": summary}, indent=2) + "\n")
    print(format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
