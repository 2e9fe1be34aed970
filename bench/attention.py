"""Benchmark the TopKMaskedAttention CUDA kernel against dense and masked attention.

    python bench/attention.py                      # the default grid, fp16 and bf16
    python bench/attention.py --ns 197 1025 --dtypes fp16 --batches 1 --inputs coherent

Peers, on the same q, k, v: dense torch SDPA on its flash, cuDNN and efficient backends
(whichever exist here); FlexAttention with a block mask built from the same top-k
selection (the mask is built outside the timed region, in the peer's favour); the naive
masked dense attention (the eager reference, which is what the decomposed ONNX graph
runs). Settings: N in {197, 577, 1025, 4097}, budget ceil(0.25 (N-1)) and a fixed 49,
batch 1 and a GPU-filling batch, H=6, d=64 (DeiT-S), R=32. Inputs are pruned like the
paper's (coefficients above 0.05, or the top 8; a basis pruned by magnitude) and lie on the
exact-selection value grid (coef multiples of 2^-10, basis m * 2^e per column). Coherent
inputs are calibrated on a trained model's masks (bench/mask_stats.py, bench/NOTES.md):
basis vectors are blobs of varied size on the patch grid, 47 % nonzero; queries prefer
nearby, compact ones (4-5 coefficients per row); ~20 % of the scores are exactly 0 and
~10 % of rows at keep 0.25 have a B-th score of 0. Random inputs (signed basis, no spatial
structure, same densities) are the pessimistic case for the kernel's key unions.

Timing: each call is captured in a CUDA graph (eager if capture fails), replayed over
rotating input buffers bigger than L2, timed with CUDA events after a warm-up; the
median is reported with GB/s, TFLOP/s, the speed-up over every peer and the ratio to
the memory floor (bytes of q, k, v, coef and out over the copy bandwidth measured with
a large device-to-device copy). Writes bench/results/attention_<gpu>_<time>.json and a
PNG plot of time against N. Without a CUDA GPU it exits with status 2 and one line.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import statistics
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
KERNEL = "topk_kernel"
PEERS = ("sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "flex_block_mask", "naive_masked")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ns", type=int, nargs="+", default=[197, 577, 1025, 4097], help="sequence lengths N")
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--rank", type=int, default=32, help="predictor rank R (n_down)")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp16", "bf16"])
    p.add_argument("--keep-rate", type=float, default=0.25, help="budget = ceil(keep_rate * (N - 1))")
    p.add_argument("--fixed-budget", type=int, default=49, help="the second budget setting (0: skip)")
    p.add_argument("--batches", nargs="+", default=["1", "fill"], help="batch sizes; 'fill' fills the GPU")
    p.add_argument("--fill-rows", type=int, default=1 << 19, help="'fill' batch: about this many B*H*N rows")
    p.add_argument("--inputs", nargs="+", choices=["coherent", "random"], default=["coherent", "random"])
    p.add_argument("--coef", choices=["top8", "threshold"], default="threshold", help="coefficient pruning")
    p.add_argument("--algo", choices=["auto", "tiled", "rowwise"], default="auto", help="kernel algorithm")
    p.add_argument("--methods", nargs="+", choices=(KERNEL, *PEERS), default=[KERNEL, *PEERS])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-reps", type=int, default=100)
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of timed replays per measurement")
    p.add_argument("--no-graphs", action="store_true", help="time eager calls instead of CUDA graphs")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def fail(message: str) -> None:
    print(f"bench/attention.py: {message}", file=sys.stderr)
    raise SystemExit(2)


# ------------------------------------------------------------------ inputs


# Coherent inputs, calibrated against the trained demo model (bench/NOTES.md, "Masks").
BASIS_DENSITY = 0.47
COEF_THRESHOLD = 0.05


def quantise_to_grid(torch, coef, basis):
    """The exact-selection value grid: coef -> round-half-even(coef * 1024) / 1024; basis per
    column j: m * 2^e, e = max(-24, ceil(log2(max_r |b_rj| / 127))), m = round-half-even(b / 2^e).
    Every product and partial sum of the scores is then exact in fp32 and fp16."""
    coef = torch.round(coef.float() * 1024) / 1024
    colmax = basis.float().abs().amax(dim=0)
    e = torch.ceil(torch.log2(torch.where(colmax > 0, colmax, torch.ones_like(colmax)) / 127)).clamp(min=-24)
    scale = torch.exp2(e)
    return coef, torch.round(basis.float() / scale) * scale


def make_inputs(torch, b, h, n, d, rank, dtype, mode, coef_mode, seed, cls_rows=1, dev="cuda"):
    """q, k, v [b, h, n, d]; coef [b, h, n-1, rank] pruned; basis [rank, n], 47 % nonzero; on the value grid."""
    g = torch.Generator(device=dev).manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, device=dev, dtype=dtype, generator=g) for _ in range(3))
    m = n - cls_rows
    side = max(1, math.ceil(math.sqrt(m)))
    idx = torch.arange(m, device=dev)
    pos = torch.stack([idx // side, idx % side], -1).float()  # patch-grid coordinates

    def uniform(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(*shape, device=dev, generator=g)

    if mode == "coherent":
        # Blobs of log-uniform size (3 % - 50 % of the side); queries weigh nearby blobs,
        # compact ones more, with a per-row temperature (sharp rows keep 1-2 coefficients).
        centers = uniform(rank, 2) * side
        log_size = uniform(rank, lo=math.log(0.03), hi=math.log(0.5))
        sigma = side * torch.exp(log_size)
        d2 = ((pos[None] - centers[:, None]) ** 2).sum(-1)  # [rank, m]
        patches = torch.exp(-d2 / (2 * sigma[:, None] ** 2)) * (1 + 0.3 * torch.randn(rank, m, device=dev, generator=g)).abs()
        basis = torch.cat([0.02 * uniform(rank, cls_rows), 0.3 * patches], dim=1)
        near = -((pos[:, None] - centers[None]) ** 2).sum(-1) / (2 * (0.15 * side) ** 2) - 0.6 * (log_size - math.log(0.03))
        temperature = torch.exp(uniform(b, h, m, 1, lo=math.log(0.5), hi=math.log(1.5)))
        logits = (near + 0.5 * torch.randn(b, h, m, rank, device=dev, generator=g)) / temperature
    else:
        basis = 0.1 * torch.randn(rank, n, device=dev, generator=g)
        logits = 2.0 * torch.randn(b, h, m, rank, device=dev, generator=g)
    cut = basis.abs().flatten().kthvalue(int((1 - BASIS_DENSITY) * basis.numel())).values
    basis = torch.where(basis.abs() > cut, basis, 0)
    coef = torch.softmax(logits, dim=-1)
    if coef_mode == "top8":
        keep = torch.zeros_like(coef, dtype=torch.bool).scatter_(-1, coef.topk(min(8, rank), -1).indices, True)
        coef = coef * keep
    else:
        coef = torch.where(coef > COEF_THRESHOLD, coef, 0)
    coef, basis = quantise_to_grid(torch, coef, basis)
    return q, k, v, coef.to(dtype), basis.to(dtype)


def union_fraction(torch, coef, basis, budget, tile=64, tiling="raster"):
    """Mean size of the union of the top-B key sets of a query tile, over N: `tile`
    consecutive rows (raster), or 8x8 patch squares of the side x side grid (2d)."""
    from sparsifiner.ops.reference import connectivity_scores, topk_mask

    mask = topk_mask(connectivity_scores(coef[:1], basis), budget)  # [1, H, M, N]
    m, n = mask.shape[-2:]
    side = math.isqrt(m)
    if tiling == "2d" and side * side == m:
        grid = mask.reshape(*mask.shape[:-2], side, side, n)
        unions = [grid[..., y:y + 8, x:x + 8, :].flatten(-3, -2).any(dim=-2)
                  for y in range(0, side, 8) for x in range(0, side, 8)]
        return torch.stack(unions, -2).float().mean().item()
    pad = (-m) % tile
    mask = torch.nn.functional.pad(mask, (0, 0, 0, pad))
    unions = mask.reshape(*mask.shape[:-2], -1, tile, n).any(dim=-2)
    return unions.float().mean().item()


# ------------------------------------------------------------------ timing


def copy_bandwidth(torch) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), from a large copy."""
    free, _ = torch.cuda.mem_get_info()
    size = int(min(1 << 30, free // 8))
    src = torch.empty(size, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    times = time_calls(torch, [lambda: dst.copy_(src)], warmup=3, max_reps=30, min_time=0.2, graphs=False)
    del src, dst
    return 2 * size / (times / 1e3)


def time_calls(torch, calls, warmup, max_reps, min_time, graphs):
    """Median milliseconds of one call, rotating over `calls` (one per input buffer set)."""
    runners = calls
    if graphs:
        runners = []
        pool = torch.cuda.graph_pool_handle()  # one pool: the graphs replay in capture order
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for call in calls:  # warm up outside the capture (lazy init, autotuning)
                call()
        torch.cuda.current_stream().wait_stream(stream)
        for call in calls:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                call()
            runners.append(graph.replay)
    for i in range(warmup * len(runners)):
        runners[i % len(runners)]()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    runners[0]()
    end.record()
    torch.cuda.synchronize()
    reps = int(max(5, min(max_reps, min_time * 1e3 / max(start.elapsed_time(end), 1e-3))))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for i, (s, e) in enumerate(events):
        s.record()
        runners[i % len(runners)]()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def measure(torch, calls, args):
    """(ms, used CUDA graphs) with a fallback to eager timing when capture fails."""
    if not args.no_graphs:
        try:
            return time_calls(torch, calls, args.warmup, args.max_reps, args.min_time, graphs=True), True
        except Exception:  # noqa: BLE001 - some peers cannot be captured; time them eagerly
            torch.cuda.synchronize()
    return time_calls(torch, calls, args.warmup, args.max_reps, args.min_time, graphs=False), False


# ------------------------------------------------------------------ methods


def method_calls(torch, method, sets, budget, scale, ext, algo_code):
    """One zero-argument callable per rotating input set, or raise with the reason."""
    import torch.nn.functional as F

    if method == KERNEL:
        outs = [torch.empty_like(s[0]) for s in sets]
        return [lambda s=s, o=o: ext.forward_into(*s, budget, scale, 1, algo_code, o) for s, o in zip(sets, outs)]
    if method.startswith("sdpa_"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
                   "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}[method]

        def sdpa(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, scale=scale)

        sdpa(*sets[0][:3])  # raises when the backend is unavailable for these inputs
        return [lambda s=s: sdpa(*s[:3]) for s in sets]
    if method == "flex_block_mask":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        from sparsifiner.ops.reference import connectivity_scores, full_mask, topk_mask

        q, _, _, coef, basis = sets[0]
        b, h, n, _ = q.shape
        # One image at a time: the fp32 scores and sort indices of a whole batch can be huge.
        dense_mask = torch.cat([full_mask(topk_mask(connectivity_scores(coef[i:i + 1], basis), budget), 1)
                                for i in range(b)])

        def mask_mod(bi, hi, qi, ki):
            return dense_mask[bi, hi, qi, ki]

        block_mask = create_block_mask(mask_mod, b, h, n, n, device="cuda")
        flex = torch.compile(flex_attention, dynamic=False)
        return [lambda s=s: flex(s[0], s[1], s[2], block_mask=block_mask, scale=scale) for s in sets]
    if method == "naive_masked":
        from sparsifiner.ops.reference import topk_masked_attention_reference

        return [lambda s=s: topk_masked_attention_reference(*s, budget, scale, 1) for s in sets]
    raise ValueError(method)


def naive_bytes(b, h, n) -> int:
    """Rough peak memory of the naive masked attention: fp32 scores, logits, probs, the
    bool mask and the int64 sort indices, all N x N."""
    return b * h * n * n * (4 * 3 + 1 + 8)


# ------------------------------------------------------------------ main


def run(args):
    import torch

    from sparsifiner.errors import SparsifinerError
    from sparsifiner.ops.cuda_binding import ALGORITHMS, load_cuda_binding

    if not torch.cuda.is_available():
        fail("needs a CUDA GPU and torch sees none (torch.cuda.is_available() is False); nothing was measured")
    try:
        ext = load_cuda_binding()
    except SparsifinerError as exc:
        fail(str(exc))
    props = torch.cuda.get_device_properties(0)
    bandwidth = copy_bandwidth(torch)
    print(f"{props.name}: {props.multi_processor_count} SMs, copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    h, d, r = args.heads, args.head_dim, args.rank
    algo_names = {code: name for name, code in ALGORITHMS.items()}
    records = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, DTYPES[dtype_name])
        elt = torch.finfo(dtype).bits // 8
        for n in args.ns:
            budgets = [("keep", max(1, math.ceil(args.keep_rate * (n - 1))))]
            if args.fixed_budget:
                budgets.append(("fixed", min(args.fixed_budget, n)))
            for batch_arg in args.batches:
                b = max(1, math.ceil(args.fill_rows / (h * n))) if batch_arg == "fill" else int(batch_arg)
                io_bytes = (4 * b * h * n * d + b * h * (n - 1) * r) * elt + r * n * elt
                sets_count = max(2, min(8, math.ceil(3 * props.L2_cache_size / io_bytes)))
                for mode in args.inputs:
                    sets = [make_inputs(torch, b, h, n, d, r, dtype, mode, args.coef, seed=i) for i in range(sets_count)]
                    basis = sets[0][4]
                    sets = [(q, k, v, c, basis) for q, k, v, c, _ in sets]
                    for budget_mode, budget in budgets:
                        scale = d**-0.5
                        rec = dict(dtype=dtype_name, n=n, batch=b, batch_kind=batch_arg, heads=h, head_dim=d, rank=r,
                                   inputs=mode, coef=args.coef, budget=budget, budget_mode=budget_mode,
                                   algo=algo_names[ext.resolve_algo(*sets[0], budget, scale, 1, ALGORITHMS[args.algo])],
                                   union_fraction=union_fraction(torch, sets[0][3], basis, budget),
                                   union_fraction_2d=union_fraction(torch, sets[0][3], basis, budget, tiling="2d"),
                                   bytes=io_bytes, memory_floor_ms=io_bytes / bandwidth * 1e3, methods={})
                        flops_sparse = 4 * b * h * ((n - 1) * budget + n) * d
                        flops_dense = 4 * b * h * n * n * d
                        for method in args.methods:
                            if method == "naive_masked" and naive_bytes(b, h, n) > 0.5 * torch.cuda.mem_get_info()[0]:
                                rec["methods"][method] = {"skipped": "estimated memory exceeds half the free memory"}
                                continue
                            try:
                                calls = method_calls(torch, method, sets, budget, scale, ext, ALGORITHMS[args.algo])
                                ms, graphed = measure(torch, calls, args)
                            except Exception as exc:  # noqa: BLE001 - report the peer as unavailable
                                rec["methods"][method] = {"skipped": f"{type(exc).__name__}: {str(exc)[:200]}"}
                                torch.cuda.synchronize()
                                continue
                            flops = flops_dense if method.startswith("sdpa_") else flops_sparse
                            rec["methods"][method] = dict(ms=ms, cuda_graph=graphed, gb_per_s=io_bytes / ms / 1e6,
                                                          tflop_per_s=flops / ms / 1e9)
                            del calls
                        summarize(rec)
                        records.append(rec)
                        print(format_record(rec), flush=True)
                    del sets
                    torch.cuda.empty_cache()
    return dict(device=props.name, sm_count=props.multi_processor_count, copy_bandwidth_gb_s=bandwidth / 1e9,
                torch=torch.__version__, cuda=torch.version.cuda, settings={k: str(v) for k, v in vars(args).items()},
                created=datetime.datetime.now().isoformat(timespec="seconds"), records=records)


def summarize(rec):
    ours = rec["methods"].get(KERNEL, {}).get("ms")
    if ours is None:
        return
    rec["kernel_over_memory_floor"] = ours / rec["memory_floor_ms"]
    rec["speedup_vs"] = {m: r["ms"] / ours for m, r in rec["methods"].items() if m != KERNEL and "ms" in r}
    dense = [r["ms"] for m, r in rec["methods"].items() if m.startswith("sdpa_") and "ms" in r]
    if dense:
        rec["speedup_vs_best_dense_sdpa"] = min(dense) / ours


def format_record(rec):
    head = (f"{rec['dtype']} N={rec['n']:5d} B={rec['batch']:4d} budget={rec['budget']:5d} {rec['inputs']:8s} "
            f"union={rec['union_fraction']:.2f} [{rec['algo']}]")
    parts = [f"{m}={r['ms']:.3f}ms" if "ms" in r else f"{m}=skip" for m, r in rec["methods"].items()]
    tail = ""
    if "kernel_over_memory_floor" in rec:
        tail = f" | floor x{rec['kernel_over_memory_floor']:.2f}"
        if "speedup_vs_best_dense_sdpa" in rec:
            tail += f", vs best SDPA x{rec['speedup_vs_best_dense_sdpa']:.2f}"
    return head + " " + " ".join(parts) + tail


def plot(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = result["records"]
    panels = sorted({(r["dtype"], r["inputs"], r["budget_mode"], r["batch_kind"]) for r in recs})
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        sel = sorted((r for r in recs if (r["dtype"], r["inputs"], r["budget_mode"], r["batch_kind"]) == key),
                     key=lambda r: r["n"])
        for method in (KERNEL, *PEERS):
            pts = [(r["n"], r["methods"][method]["ms"]) for r in sel if "ms" in r["methods"].get(method, {})]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method, lw=2.5 if method == KERNEL else 1.2)
        ax.plot([r["n"] for r in sel], [r["memory_floor_ms"] for r in sel], "k--", lw=1, label="memory floor")
        ax.set(xscale="log", yscale="log", xlabel="N", ylabel="ms",
               title=f"{key[0]}, {key[1]} inputs, budget {key[2]}, batch {key[3]}")
        ax.title.set_fontsize(9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"TopKMaskedAttention vs peers on {result['device']} (H={recs[0]['heads']}, d={recs[0]['head_dim']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", result["device"]).strip("-")
    stem = args.out_dir / f"attention_{slug}_{datetime.datetime.now():%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    if not args.no_plot and result["records"]:
        plot(result, stem.with_suffix(".png"))
    print(f"wrote {stem}.json" + ("" if args.no_plot else f" and {stem.name}.png"))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
