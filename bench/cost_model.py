"""A CPU cost model of the TopKMaskedAttention kernels: instruction counts from the emulator.

    python bench/cost_model.py                           # every benchmark case, v1 and v2
    python bench/cost_model.py --algos tiled --ns 1025   # a subset

The CUDA kernels run unchanged on the CPU emulator (tests/trt_plugins/emulator), which
counts warp instructions by class and kernel phase (collectives itself, the rest from the
kernels' SPF_COUNT annotations, read off their sm_90 SASS). Counts are deterministic.
This script runs a sample of the query tiles of every benchmark case (bench/attention.py's
settings and inputs: H = 6, d = 64, R = 32, fp16), normalises the counts per (row, key)
pair (query rows x all N keys, as dense attention is measured), and converts them into
H100 SM-cycles with the per-SM pipe rates below: the predicted time is the busiest pipe
(issue, FMA, ALU, XU, MUFU, shuffle, shared memory, tensor cores, L2 bandwidth), with an
allowance of 1.0-1.5x for imperfect overlap, and never below the HBM floor of the op's
bytes. Dividing dense attention's measured cost per (row, key) by it gives the predicted
speed-up (FlashAttention-2 = SDPA flash, FlashAttention-3, from KERNEL_REVIEW.md s. 2).

Everything this prints is a PREDICTION from a model (pipe rates recalled from the CUDA
programming guide, annotations that approximate the SASS): a GPU run calibrates it.
Writes bench/results/cost_model.json (records replaced per algorithm and case).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "cost_model.json"

# H100 SXM: 132 SMs x 1.755 GHz. Warp instructions (or wavefronts, bytes) per SM per clock.
SM_CYCLES_PER_S = 132 * 1.755e9
RATES = {
    "issue": 4.0,        # 4 schedulers x 1 warp instruction
    "fma": 4.0,          # 128 fp32 lanes
    "alu": 2.0,          # 64 integer / logic / compare lanes (ballots included)
    "bit": 0.5,          # POPC, FLO: 16 lanes
    "cvt": 0.5,          # F2I, I2F, F2F: 16 lanes
    "mufu": 0.5,         # 16 lanes
    "shfl": 1.0,         # 32 lanes
    "smem": 1.0,         # one 128-byte wavefront (loads, stores, atomics, their conflicts)
    "tensor": 1 / 1.5,   # mma.m16n8k16 (4096 FLOP) at ~66 % of the 4096 FLOP/clk dense peak
    "l2": 5.5e12 / SM_CYCLES_PER_S,  # L2 -> SM bytes per SM-cycle (~5.5 TB/s, an assumption)
}
HBM_BYTES_PER_S = 3.0e12
# Dense attention, SM-cycles per (row, key) at d = 64, fp16 (KERNEL_REVIEW.md s. 2): FA3 and
# FA2 (= SDPA flash) measured at N = 512 / 1k / 4k; at N = 197 only an estimate (0.3-0.5).
DENSE = {
    "fa2": {197: (0.3, 0.5), 577: (0.210, 0.210), 1025: (0.194, 0.194), 4097: (0.185, 0.185)},
    "fa3": {197: (0.3, 0.5), 577: (0.178, 0.178), 1025: (0.151, 0.151), 4097: (0.125, 0.125)},
}
ROW_COUNTERS = ("rows", "rows_list", "rows_zero", "rows_v1")
INSTRUCTION_OPS = ("fma", "alu", "bit", "cvt", "mufu", "shfl", "vote", "lds", "sts", "atoms", "ldsm", "mma", "ldg",
                   "bar", "other")
SELECTION_PHASES = ("scores", "select", "fallback", "sample", "filter", "lists", "resolve")


def case_list(ns, keep_rate, fixed_budget, inputs):
    out = []
    for mode in inputs:
        for n in ns:
            budgets = [("keep", max(1, math.ceil(keep_rate * (n - 1))))]
            if fixed_budget and min(fixed_budget, n) != budgets[0][1]:
                budgets.append(("fixed", min(fixed_budget, n)))
            for kind, budget in budgets:
                out.append({"n": n, "budget": budget, "budget_mode": kind, "inputs": mode})
    return out


def emulator():
    sys.path.insert(0, str(ROOT / "tests" / "trt_plugins"))
    sys.path.insert(0, str(ROOT))
    from emulated_kernel import load_emulator

    kernels = load_emulator()
    if kernels is None:
        raise SystemExit("bench/cost_model.py: needs the CUDA toolkit's headers (set CUDA_HOME)")
    return kernels


def make_case(n, budget, mode, heads, d, rank, seed=0):
    """bench/attention.py's inputs for one image, as a kernel test Case (fp16)."""
    import torch

    sys.path.insert(0, str(HERE))
    import attention
    from trt_kernel_cases import Case

    q, k, v, coef, basis = attention.make_inputs(torch, 1, heads, n, d, rank, torch.float16, mode, "threshold", seed,
                                                 dev="cpu")
    return Case(q, k, v, coef, basis, budget, d**-0.5, 1)


def _prime_at_least(x: int) -> int:
    x = max(2, x)
    while any(x % p == 0 for p in range(2, int(x**0.5) + 1)):
        x += 1
    return x


def pipe_cycles(per_pair: dict) -> dict:
    """SM-cycles per (row, key) each pipe needs, from warp instructions per (row, key)."""
    c = per_pair
    instructions = sum(c[op] for op in INSTRUCTION_OPS)
    return {
        "issue": instructions / RATES["issue"],
        "fma": c["fma"] / RATES["fma"],
        "alu": (c["alu"] + c["vote"]) / RATES["alu"],
        "bit": c["bit"] / RATES["bit"],
        "cvt": c["cvt"] / RATES["cvt"],
        "mufu": c["mufu"] / RATES["mufu"],
        "shfl": c["shfl"] / RATES["shfl"],
        "smem": (c["lds"] + c["sts"] + c["smem_extra"] + c["ldsm"] + c["atoms"] + c["atoms_extra"]) / RATES["smem"],
        "tensor": c["mma"] / RATES["tensor"],
        "l2": c["g_bytes"] / RATES["l2"],
    }


def model(counts: dict, n: int, heads: int, d: int, rank: int) -> dict:
    """Per-(row, key) counts, pipe cycles, predicted time and ratios to dense attention."""
    rows = sum(counts[ph]["rows"] for ph in counts)
    pairs = rows * n
    total = {op: sum(counts[ph][op] for ph in counts if ph != "prep") for op in counts["attend"]}
    per_pair = {op: v / pairs for op, v in total.items()}
    by_phase = {ph: sum(counts[ph][op] for op in INSTRUCTION_OPS) / pairs for ph in counts if ph != "prep"}
    cycles = pipe_cycles(per_pair)
    bound_pipe = max(cycles, key=cycles.get)
    bound = cycles[bound_pipe]
    # HBM floor: q, k, v, out (fp16) and coef (fp16) once, per (row, key).
    floor_bytes_per_row = 4 * d * 2 + rank * 2
    floor = floor_bytes_per_row / n / (HBM_BYTES_PER_S / SM_CYCLES_PER_S)
    lo, hi = max(bound, floor), max(1.5 * bound, floor)
    per_image_us = [c * heads * n * n / SM_CYCLES_PER_S * 1e6 for c in (lo, hi)]
    ratios = {}
    for name, table in DENSE.items():
        dense_lo, dense_hi = table[n] if n in table else table[min(table, key=lambda k: abs(k - n))]
        ratios[name] = (dense_lo / hi, dense_hi / lo)
    return {
        "rows_sampled": rows,
        "warp_instr_per_pair": sum(per_pair[op] for op in INSTRUCTION_OPS),
        "selection_scores_warp_instr_per_pair": sum(by_phase.get(ph, 0.0) for ph in SELECTION_PHASES),
        "by_phase_warp_instr_per_pair": by_phase,
        "per_pair": per_pair,
        "pipe_sm_cycles_per_pair": cycles,
        "bound_pipe": bound_pipe,
        "hbm_floor_sm_cycles_per_pair": floor,
        "predicted_sm_cycles_per_pair": (lo, hi),
        "predicted_us_per_image": per_image_us,
        "predicted_speedup_vs": ratios,
        "prep_warp_instr_per_launch": sum(counts["prep"][op] for op in INSTRUCTION_OPS),
    }


def run_case(ek, case_spec, algo, heads, d, rank, target_blocks):
    case = make_case(case_spec["n"], case_spec["budget"], case_spec["inputs"], heads, d, rank)
    n = case_spec["n"]
    # Sample about target_blocks attention blocks with a prime stride (no aliasing with
    # the tiles of a head); the emulator always runs the last block too.
    rows_per_block = 64
    total_blocks = heads * (math.ceil((n - 1) / rows_per_block) + 1)
    stride = 1 if total_blocks <= target_blocks else _prime_at_least(total_blocks // target_blocks)
    start = time.time()
    _, used = ek.run(case, algo, block_stride=stride)
    counts = ek.last_counts
    rec = dict(case_spec, algo=algo, algo_used=used, heads=heads, head_dim=d, rank=rank, block_stride=stride,
               emulation_s=round(time.time() - start, 1), counts=counts)
    rec.update(model(counts, n, heads, d, rank))
    rows = max(1.0, sum(counts[ph]["rows"] for ph in counts))
    rec["row_paths"] = {k: sum(counts[ph][k] for ph in counts) / rows for k in ("rows_list", "rows_zero", "rows_v1")}
    return rec


def format_row(rec) -> str:
    fa2, fa3 = rec["predicted_speedup_vs"]["fa2"], rec["predicted_speedup_vs"]["fa3"]
    ph = rec["by_phase_warp_instr_per_pair"]
    return (f"{rec['algo_used']:8s} N={rec['n']:5d} B={rec['budget']:5d} {rec['inputs']:8s} "
            f"instr/pair={rec['warp_instr_per_pair']:.3f} (sel+scores {rec['selection_scores_warp_instr_per_pair']:.3f}: "
            f"scores {ph.get('scores', 0):.3f} select {ph.get('select', 0):.3f} fallback {ph.get('fallback', 0):.3f}"
            + (f" [sample {ph['sample']:.3f} filter {ph['filter']:.3f} lists {ph['lists']:.3f} resolve {ph['resolve']:.3f}]"
               if ph.get("sample", 0) + ph.get("filter", 0) > 0 else "") + "; "
            f"union {ph.get('union', 0):.3f} attend {ph.get('attend', 0):.3f}) "
            f"cyc/pair={rec['predicted_sm_cycles_per_pair'][0]:.3f}-{rec['predicted_sm_cycles_per_pair'][1]:.3f} "
            f"[{rec['bound_pipe']}] vs FA2 {fa2[0]:.2f}-{fa2[1]:.2f}x vs FA3 {fa3[0]:.2f}-{fa3[1]:.2f}x"
            + (f" | rows: list {rec['row_paths']['rows_list']:.3f} zero {rec['row_paths']['rows_zero']:.3f} "
               f"v1 {rec['row_paths']['rows_v1']:.3f}" if rec["algo_used"] == "tiled2d" else ""))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", nargs="+", default=["tiled", "auto"],
                   help="kernels to count: tiled (v1), tiled2d (v2 only), auto (v2 where it applies, else v1)")
    p.add_argument("--ns", type=int, nargs="+", default=[197, 577, 1025, 4097])
    p.add_argument("--keep-rate", type=float, default=0.25)
    p.add_argument("--fixed-budget", type=int, default=49)
    p.add_argument("--inputs", nargs="+", choices=["coherent", "random"], default=["coherent", "random"])
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--blocks", type=int, default=8, help="attention blocks to emulate per case (a sample)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-save", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    ek = emulator()
    records = []
    for spec in case_list(args.ns, args.keep_rate, args.fixed_budget, args.inputs):
        for algo in args.algos:
            try:
                rec = run_case(ek, spec, algo, args.heads, args.head_dim, args.rank, args.blocks)
            except RuntimeError as exc:  # e.g. the 2-D kernel's shared memory does not fit
                print(f"{algo:8s} N={spec['n']:5d} B={spec['budget']:5d} {spec['inputs']:8s} skipped: {exc}", flush=True)
                continue
            records.append(rec)
            print(format_row(rec), flush=True)
    if not args.no_save:
        old = json.loads(args.out.read_text()) if args.out.exists() else {"records": []}
        key = lambda r: (r["algo"], r["n"], r["budget"], r["inputs"])  # noqa: E731
        fresh = {key(r) for r in records}
        kept = [r for r in old.get("records", []) if key(r) not in fresh]
        result = {"note": "PREDICTIONS of a CPU cost model (bench/cost_model.py), not measurements",
                  "rates_per_sm_cycle": RATES, "dense_sm_cycles_per_pair": {k: {str(n): v for n, v in t.items()}
                                                                           for k, t in DENSE.items()},
                  "updated": datetime.datetime.now().isoformat(timespec="seconds"),
                  "records": sorted(kept + records, key=key)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
