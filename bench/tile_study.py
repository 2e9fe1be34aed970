"""Tile-shared selection study (issue 15): accuracy on the demo, union and recall at DeiT-S size.

Demo (digits, N = 65: 8x8 patch grid + CLS, B = 16): for each seed one teacher and one
phase 1 (the demo recipe; phase-1 checkpoints of bench/selection_study.py are reused
when they exist), then phase 2 once per variant, each evaluated on the 360 val digits:

  row_b16      per-row top-16 (the paper; the baseline, same code and settings)
  tile4_c16    4x4 tiles (16 query rows) share their top-C keys, C = B, 1.5B, 2B, 4B
  tile4_c24 .. (C keys per row: MHSA costs C/B of row at B)
  tile2_c16    2x2 tiles (4 rows), C = B and 2B
  two4_c32     two-level: the 4x4 tile's top-32, then each row's top-16 inside it
  row_b24/32   per-row at 1.5B and 2B: the same MHSA MACs as tile at C = 24, 32

Metrics: top-1, attention-mass recall (dense probability inside the mask), the per-row
oracle's recall at B and at the same keys per row, selection recall (share of each
row's own top-B kept), mask density, MHSA MACs (sparsifiner.model.flops, measured
densities). Before phase 2, the row_b16 checkpoint is also evaluated with each tile
selection swapped in (no fine-tuning), and its row masks give the union of a tile's
row selections.

DeiT-S size (``random``): the inputs of bench/attention.py (coherent and random
coefficients and basis, H = 6, R = 32, top-8 coefficients), on the exact-score grids, at
N = 197 (14x14, B = 49), 1025 (32x32, B = 256) and 4097 (64x64, B = 49 and 1024): union of
the row top-B selections of an 8x8 (and 4x4) tile, and the share of each row's top-B
inside its tile's top-C for C = B, 1.5B, 2B, 4B.

    nice -n 19 python bench/tile_study.py train --seeds 0 1 2 --threads 1     # resumable; run 1-2 workers
    python bench/tile_study.py random --threads 1
    python bench/tile_study.py report      # bench/results/tile_study.json and the table

Workers claim jobs with a lock folder, so two can run at once on one output folder.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "tile_study.json"
# Phase-1 checkpoints of bench/selection_study.py (same recipe and seeds) are reused; --shared-phase1 moves it.
SHARED_PHASE1 = Path("runs/selection_study")
# name -> Sparsifiner settings of phase 2, in priority order (the table first).
VARIANTS = {
    "row_b16": {"selection": "row"},
    "tile4_c16": {"selection": "tile", "tile_rows": 4, "tile_cols": 4, "tile_budget": 16},
    "tile4_c24": {"selection": "tile", "tile_rows": 4, "tile_cols": 4, "tile_budget": 24},
    "tile4_c32": {"selection": "tile", "tile_rows": 4, "tile_cols": 4, "tile_budget": 32},
    "tile4_c64": {"selection": "tile", "tile_rows": 4, "tile_cols": 4, "tile_budget": 64},
    "row_b32": {"selection": "row", "budget": 32},
    "tile2_c16": {"selection": "tile", "tile_rows": 2, "tile_cols": 2, "tile_budget": 16},
    "row_b24": {"selection": "row", "budget": 24},
    "two4_c32": {"selection": "two_level", "tile_rows": 4, "tile_cols": 4, "tile_budget": 32},
    "tile2_c32": {"selection": "tile", "tile_rows": 2, "tile_cols": 2, "tile_budget": 32},
}
METRICS = ("top1", "recall", "oracle_recall", "row_oracle_recall", "selection_recall", "mask_density",
           "coef_sparsity", "keys_per_row", "mhsa_macs", "mhsa_reduction")


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def settings_for(seed: int, **sparsifiner):
    from sparsifiner.train.recipe import build_train_settings, load_recipe

    overrides = {"seed": seed, **{f"sparsifiner.{k}": v for k, v in sparsifiner.items()}}
    return build_train_settings(load_recipe("demo"), overrides)


def claim(folder: Path) -> bool:
    """Take a job: True for the one worker whose mkdir of the lock succeeds."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        (folder / ".claim").mkdir()
        return True
    except FileExistsError:
        return False


def phase1_path(output: Path, seed: int):
    from sparsifiner.train.runner import artifact_path

    for base in (output / f"seed{seed}", SHARED_PHASE1 / f"seed{seed}"):
        if artifact_path(base, "phase1").exists():
            return artifact_path(base, "phase1")
    return None


def prepare(output: Path, seed: int) -> None:
    """Teacher and phase 1 of one seed (the demo recipe), unless a phase-1 checkpoint exists."""
    from sparsifiner.train.runner import artifact_path, run_training

    base = output / f"seed{seed}"
    log(f"seed {seed}: teacher and phase 1 -> {base}")
    run_training(settings_for(seed), "teacher", base, resume=True, progress=False)
    settings = settings_for(seed).replace(checkpoint=str(artifact_path(base, "teacher")))
    run_training(settings, "1", base, resume=True, progress=False)


def mhsa(checkpoint: str, coef_density: float) -> dict:
    from sparsifiner.model.flops import count_flops
    from sparsifiner.model.source import ModelSource

    data = count_flops(ModelSource(checkpoint=checkpoint), coef_density=coef_density)
    s, d = data["total"]["sparsifiner"], data["total"]["dense"]
    return {"mhsa_macs": s["mhsa"] + s["predictor"], "mhsa_reduction": data["reduction"]["mhsa"],
            "attention_macs": s["mhsa"], "dense_mhsa_macs": d["mhsa"]}


def phase2(output: Path, seed: int, name: str, phase1: Path) -> dict:
    from sparsifiner.train.evaluate import evaluate_checkpoints
    from sparsifiner.train.runner import artifact_path, run_training

    folder = output / f"seed{seed}" / name
    result = folder / "result.json"
    if result.exists():
        return json.loads(result.read_text())
    if not artifact_path(folder, "phase2").exists():
        log(f"seed {seed}: phase 2 {name}")
        settings = settings_for(seed, **VARIANTS[name]).replace(checkpoint=str(phase1))
        run_training(settings, "2", folder, resume=True, progress=False)
    path = str(artifact_path(folder, "phase2"))
    row = evaluate_checkpoints([path], "digits", batch_size=360)[0]
    out = {"seed": seed, "variant": name, "phase1": str(phase1), **{m: row[m] for m in METRICS if m in row},
           **mhsa(path, 1.0 - row["coef_sparsity"])}
    result.write_text(json.dumps(out, indent=2) + "\n")
    log(json.dumps(out))
    return out


def shared_in_progress(seed: int) -> bool:
    """Whether bench/selection_study.py is still training this seed's phase 1 (metrics written in the last 30 min)."""
    metrics = SHARED_PHASE1 / f"seed{seed}" / "metrics.jsonl"
    return metrics.exists() and time.time() - metrics.stat().st_mtime < 1800


def next_job(output: Path, seeds, variants):
    """The next job to claim: a phase 2 whose phase 1 exists (issue's variants first), else the
    teacher and phase 1 of a seed nobody is training; None when nothing is claimable now."""
    for name in variants:
        for seed in seeds:
            folder = output / f"seed{seed}" / name
            phase1 = phase1_path(output, seed)
            if phase1 is not None and not (folder / ".claim").exists():
                return ("phase2", seed, name, phase1)
    for seed in seeds:
        if phase1_path(output, seed) is None and not shared_in_progress(seed):
            if not (output / f"seed{seed}" / "prep" / ".claim").exists():
                return ("prep", seed, None, None)
    return None


def train(args) -> None:
    output = Path(args.output)
    variants = args.variants or list(VARIANTS)
    while True:
        job = next_job(output, args.seeds, variants)
        if job is None:
            if all((output / f"seed{s}" / n / ".claim").exists() for s in args.seeds for n in variants):
                return  # everything is done or another worker's
            time.sleep(120)  # waiting for a phase 1 (ours or bench/selection_study.py's)
            continue
        kind, seed, name, phase1 = job
        if kind == "prep" and claim(output / f"seed{seed}" / "prep"):
            prepare(output, seed)
        elif kind == "phase2" and claim(output / f"seed{seed}" / name):
            phase2(output, seed, name, phase1)


# --- statistics ------------------------------------------------------------------------------

def tile_statistics(coef, basis, budget: int, tiles: dict, factors=(1.0, 1.5, 2.0, 4.0)) -> dict:
    """Union of a tile's row top-B selections (share of N) and tile top-C recall (share of each row's
    top-B inside its tile's top-C), per tile shape; coef [.., M, R] and basis [R, N] on the grids."""
    import torch

    from sparsifiner.op_spec import Selection
    from sparsifiner.ops import select_mask
    from sparsifiner.ops.tile import union_fraction

    n = basis.shape[-1]
    out = {}
    with torch.no_grad():
        row = select_mask(coef, basis, budget)
        for label, (grid_cols, th, tw) in tiles.items():
            entry = {"union": union_fraction(row, Selection("tile", grid_cols, th, tw, budget))}
            for f in factors:
                c = min(n, math.ceil(f * budget))
                tile = select_mask(coef, basis, budget, Selection("tile", grid_cols, th, tw, c))
                entry[f"recall_c{f:g}b"] = float((tile & row).sum()) / float(row.sum())
            out[label] = entry
    return out


def trained_statistics(output: Path, seeds) -> dict:
    """Before phase 2: each seed's row_b16 checkpoint with tile selection swapped in (top-1,
    selection recall), and the union of its row masks per tile shape, on the val digits."""
    import torch

    from sparsifiner.data import build_datasets
    from sparsifiner.model.io import load_sparsifiner
    from sparsifiner.model.sparsify import apply_settings, collect_aux, settings_of
    from sparsifiner.train.evaluate import evaluate_model
    from sparsifiner.data import build_loader

    rows = []
    for seed in seeds:
        path = output / f"seed{seed}" / "row_b16" / "phase2.safetensors"
        if not path.exists():
            continue
        model = load_sparsifiner(path).eval()
        _, val = build_datasets("digits", model, augment=False)
        loader = build_loader(val, 360, False, 1, 0)
        base = settings_of(model)
        entry = {"seed": seed}
        images = torch.stack([val[i][0] for i in range(len(val))])
        with torch.no_grad(), collect_aux(model) as records:
            model(images)
        for label, shape in (("4x4", (4, 4)), ("2x2", (2, 2))):
            stats = [tile_statistics(r["coef"], r["basis"], 16, {label: (8, *shape)}, (1.0, 2.0))[label]
                     for r in records]
            entry[f"union_{label}"] = statistics.fmean(s["union"] for s in stats)
            for c in (16, 24, 32, 64):
                apply_settings(model, base.replace(selection="tile", tile_rows=shape[0], tile_cols=shape[1],
                                                   tile_budget=c))
                m = evaluate_model(model, loader)
                entry[f"tile{label}_c{c}"] = {"top1": m["top1"], "recall": m["recall"],
                                              "selection_recall": m["selection_recall"]}
            apply_settings(model, base)
        rows.append(entry)
        log(json.dumps(entry))
    return {"runs": rows}


def random_statistics(args) -> dict:
    """bench/attention.py's inputs at DeiT-S size, on the exact-score grids, one image."""
    import importlib.util

    import torch

    from sparsifiner.ops import quantize_basis, round_coefficients

    spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "bench" / "attention.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = []
    for n, budget in ((197, 49), (1025, 256), (4097, 49), (4097, 1024)):
        side = math.isqrt(n - 1)
        for mode in ("coherent", "random"):
            _, _, _, coef, basis = bench.make_inputs(torch, 1, 6, n, 8, 32, torch.float32, mode, "top8", seed=0,
                                                     dev="cpu")
            coef, basis = round_coefficients(coef), quantize_basis(basis)
            tiles = {"8x8": (side, 8, 8), "4x4": (side, 4, 4)}
            stats = {}
            for h in range(coef.shape[1]):  # one head at a time: N = 4097 scores are 67 MB a head
                for label, entry in tile_statistics(coef[:, h:h + 1], basis, budget, tiles).items():
                    for key, value in entry.items():
                        stats.setdefault(label, {}).setdefault(key, []).append(value)
            row = {"n": n, "budget": budget, "inputs": mode,
                   **{label: {k: statistics.fmean(v) for k, v in entry.items()} for label, entry in stats.items()}}
            out.append(row)
            log(json.dumps(row))
    return {"runs": out, "settings": {"heads": 6, "rank": 32, "coef": "top8", "seed": 0, "images": 1}}


# --- report ----------------------------------------------------------------------------------

def summarise(rows: list[dict]) -> list[dict]:
    groups: dict = {}
    for row in rows:
        groups.setdefault(row["variant"], []).append(row)
    out = []
    for name in VARIANTS:
        group = groups.get(name)
        if not group:
            continue
        entry = {"variant": name, **VARIANTS[name], "seeds": [r["seed"] for r in group]}
        for metric in METRICS + ("attention_macs",):
            values = [r[metric] for r in group if metric in r]
            if values:
                entry[metric] = statistics.fmean(values)
                entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def format_table(summary: list[dict]) -> str:
    base = next((e for e in summary if e["variant"] == "row_b16"), None)
    lines = [f"{'variant':<10} {'sel':<9} {'tile':>4} {'keys':>4} {'n':>2} {'top-1 %':>13} {'recall %':>13} "
             f"{'oracle@B %':>10} {'oracle@K %':>10} {'sel recall %':>12} {'attn MACs':>9}"]
    for e in summary:
        tile = f"{e['tile_rows']}x{e['tile_cols']}" if e["selection"] != "row" else "-"
        rel = e["attention_macs"] / base["attention_macs"] if base else float("nan")
        lines.append(f"{e['variant']:<10} {e['selection']:<9} {tile:>4} {e['keys_per_row']:>4.0f} {len(e['seeds']):>2} "
                     f"{e['top1']:>6.2f} ± {e['top1_std']:4.2f} {100 * e['recall']:>6.2f} ± {100 * e['recall_std']:4.2f} "
                     f"{100 * e['row_oracle_recall']:>10.2f} {100 * e['oracle_recall']:>10.2f} "
                     f"{100 * e['selection_recall']:>12.2f} {rel:>8.2f}x")
    return "\n".join(lines)


def format_random(data: dict) -> str:
    lines = [f"{'N':>5} {'B':>5} {'inputs':<9} {'tile':>4} {'union':>6} {'recall C=B':>10} {'1.5B':>6} {'2B':>6} {'4B':>6}"]
    for r in data["runs"]:
        for label in ("8x8", "4x4"):
            e = r[label]
            lines.append(f"{r['n']:>5} {r['budget']:>5} {r['inputs']:<9} {label:>4} {e['union']:>6.2f} "
                         f"{e['recall_c1b']:>10.2f} {e['recall_c1.5b']:>6.2f} {e['recall_c2b']:>6.2f} "
                         f"{e['recall_c4b']:>6.2f}")
    return "\n".join(lines)


def report(args) -> None:
    output = Path(args.output)
    results = Path(args.results)
    data = json.loads(results.read_text()) if results.exists() else {}
    rows = [json.loads(p.read_text()) for p in sorted(output.glob("seed*/*/result.json"))]
    data["demo"] = {"runs": rows, "summary": summarise(rows)}
    if args.trained:
        data["demo_before_phase2"] = trained_statistics(output, args.seeds)
    data["command"] = " ".join(["python", "bench/tile_study.py", *sys.argv[1:]])
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(data, indent=2) + "\n")
    print(format_table(data["demo"]["summary"]))
    if "deit_small_random" in data:
        print(format_random(data["deit_small_random"]))


def main(argv=None) -> int:
    global SHARED_PHASE1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["train", "random", "report"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None)
    parser.add_argument("--output", default="runs/tile_study")
    parser.add_argument("--shared-phase1", default=str(SHARED_PHASE1),
                        help="Output folder of bench/selection_study.py whose phase-1 checkpoints are reused")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--trained", action="store_true", help="report: also the before-phase-2 statistics")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    SHARED_PHASE1 = Path(args.shared_phase1)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.part == "train":
        train(args)
    elif args.part == "random":
        results = Path(args.results)
        data = json.loads(results.read_text()) if results.exists() else {}
        data["deit_small_random"] = random_statistics(args)
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(data, indent=2) + "\n")
        print(format_random(data["deit_small_random"]))
    else:
        report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
