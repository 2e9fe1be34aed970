"""CPU benchmark of TopKMaskedAttention: the native C++ kernel against dense attention.

Two levels, both in ONNX Runtime on the CPU execution provider with the same thread
count for every candidate:

* ``op``: one attention layer of DeiT-S geometry (6 heads, d = 64) at N tokens. The
  sparse candidates include producing the coefficients (the predictor: channel and
  token reductions, softmax, top-8 pruning) from q and k; the basis is a constant
  (smooth bumps on the patch grid, pruned and on the score grid, like a trained one).
  Candidates: ``ort_dense`` (Mul, MatMul, Softmax, MatMul), ``torch_sdpa``
  (F.scaled_dot_product_attention), ``ort_native`` (predictor + the custom op, native
  library), ``ort_function`` (the same graph through its local function: today's path),
  ``torch_native`` (the predictor in torch + the torch binding).
* ``e2e``: whole DeiT-S ONNX exports (``sparsifiner export``, random backbone weights).
  A random predictor's coefficients all fall under tau_coef, so every score ties at 0
  and selection degenerates; the ``keep25``/``b49`` exports therefore come from a
  checkpoint whose predictor is sharpened (see SHARPEN: ~3 coefficients per row survive
  the threshold, as in a trained model), ``*_topk`` from ``--coef-prune topk`` (8 per row,
  plus ORT's TopK in the graph: a pessimistic bound). Candidates: ``dense``
  (--attention dense), ``native_<variant>`` (the custom export with the native op) and
  ``function_<variant>`` (the same export through its local function: today's path).

Shared machines are noisy: every round runs all candidates of one configuration back
to back in a rotating order (interleaved), with a short pause between them; each
configuration is repeated and reported as median, quartiles, min and max, plus the load
average before and after. Ratios are medians of one run.

    python bench/cpu.py op  --out bench/results/cpu_op.json
    python bench/cpu.py e2e --onnx-dir /tmp/onnx --out bench/results/cpu_e2e.json
    python bench/cpu.py plot bench/results/cpu_op.json bench/results/cpu_e2e.json --png out.png
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HEADS, HEAD_DIM, RANK, REDUCED, COEF_TOPK = 6, 64, 32, 32, 8
OPSET = 18


# ------------------------------------------------------------------ machine and timing

def machine() -> dict:
    import onnxruntime
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    from sparsifiner.runtime.ort_native import native_isa

    return {"cpu": model, "cores": os.cpu_count(), "avx512": "avx512f" in flags, "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "native_library": native_library(),
            "native_isa": native_isa(Path(native_library())), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "git": _git_head()}


def _git_head() -> str:
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "../trt_plugins"], cwd=here, capture_output=True,
                               text=True).stdout
        return head.strip() + ("+dirty kernel sources" if dirty.strip() else "")
    except OSError:
        return "unknown"


def stats(times: list) -> dict:
    ms = sorted(1e3 * t for t in times)
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {"median_ms": statistics.median(ms), "p25_ms": q[0], "p75_ms": q[2], "min_ms": ms[0], "max_ms": ms[-1],
            "n": len(ms)}


def interleaved(candidates: dict, repeats: int, warmup: int = 1, pause: float = 0.05) -> dict:
    """{name: stats} over ``repeats`` rounds; each round runs every candidate once, the
    order rotating between rounds; ``pause`` lets thread pools stop spinning."""
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    times = {name: [] for name in names}
    cpu = {name: [] for name in names}
    load_before = os.getloadavg()[0]
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            time.sleep(pause)
            start, start_cpu = time.perf_counter(), time.thread_time()
            candidates[name]()
            cpu[name].append(time.thread_time() - start_cpu)
            times[name].append(time.perf_counter() - start)
    return {"load_before": load_before, "load_after": os.getloadavg()[0],
            "candidates": {name: stats(t) for name, t in times.items()},
            # CPU time of the calling thread: with one thread every candidate runs there, and
            # the figure ignores the time the scheduler gives to other jobs.
            "cpu_candidates": {name: stats(t) for name, t in cpu.items()}}


# ------------------------------------------------------------------ op-level graphs

def structured_basis(n: int, seed: int) -> np.ndarray:
    """Pruned bumps on the patch grid, on the score grid (m * 2^e per column, |m| <= 127)."""
    g = np.random.default_rng(seed)
    side = max(1, round(math.sqrt(n - 1)))
    ys, xs = np.divmod(np.arange(n - 1), side)
    centres = g.uniform(0, side, (RANK, 2))
    sigma = g.uniform(0.1, 0.25, RANK)[:, None] * side
    bumps = np.exp(-((ys - centres[:, :1]) ** 2 + (xs - centres[:, 1:]) ** 2) / (2 * sigma ** 2))
    bumps[bumps < 0.3] = 0
    basis = np.concatenate([g.uniform(0, 1, (RANK, 1)), bumps], axis=1)
    return np.round(basis * 127) / 128


def _init(name, array):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)


def dense_graph(n: int):
    from onnx import TensorProto, helper

    shape = ["b", HEADS, n, HEAD_DIM]
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape) for x in "qkv"]
    nodes = [helper.make_node("Mul", ["q", "scale"], ["qs"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["qs", "kt"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
             helper.make_node("MatMul", ["probs", "v"], ["out"])]
    graph = helper.make_graph(nodes, "dense", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)],
                              [_init("scale", np.array(HEAD_DIM ** -0.5))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)


def predictor_weights(n: int, seed: int) -> dict:
    g = np.random.default_rng(seed)
    return {"wq": g.normal(0, 0.5, (HEAD_DIM, REDUCED)), "wk": g.normal(0, 0.5, (HEAD_DIM, REDUCED)),
            "p_down": g.normal(0, 0.5, (n, RANK)), "basis": structured_basis(n, seed)}


def sparse_graph(n: int, budget: int, with_function: bool):
    """q, k, v -> predictor (coef, top-8 pruned) -> TopKMaskedAttention; optionally with its local function."""
    from onnx import TensorProto, helper

    from sparsifiner.export import onnx_op

    w = predictor_weights(n, seed=n)
    shape = ["b", HEADS, n, HEAD_DIM]
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape) for x in "qkv"]
    nodes = [
        helper.make_node("Slice", ["q", "one", "big", "two"], ["q_rows"]),
        helper.make_node("MatMul", ["q_rows", "wq"], ["q_r"]),
        helper.make_node("MatMul", ["k", "wk"], ["k_r"]),
        helper.make_node("Transpose", ["k_r"], ["k_rt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["k_rt", "p_down"], ["k_low"]),
        helper.make_node("MatMul", ["q_r", "k_low"], ["pl"]),
        helper.make_node("Mul", ["pl", "pscale"], ["pls"]),
        helper.make_node("Softmax", ["pls"], ["a_down"], axis=-1),
        helper.make_node("TopK", ["a_down", "topk"], ["top_v", "top_i"], axis=-1),
        helper.make_node("Shape", ["a_down"], ["a_shape"]),
        helper.make_node("ConstantOfShape", ["a_shape"], ["zeros"]),
        helper.make_node("ScatterElements", ["zeros", "top_i", "top_v"], ["coef"], axis=-1),
        helper.make_node("TopKMaskedAttention", ["q", "k", "v", "coef", "basis"], ["out"], domain="sparsifiner",
                         budget=budget, scale=HEAD_DIM ** -0.5, cls_rows=1),
    ]
    inits = [_init(name, w[name]) for name in ("wq", "wk", "p_down", "basis")]
    inits += [_init("pscale", np.array(REDUCED ** -0.5))]
    from onnx import numpy_helper

    inits += [numpy_helper.from_array(np.array(v, dtype=np.int64), name) for name, v in
              (("one", [1]), ("big", [1 << 40]), ("two", [2]), ("topk", [COEF_TOPK]))]
    graph = helper.make_graph(nodes, "sparse", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("sparsifiner", 1)], ir_version=10)
    if with_function:
        onnx_op.register_schema()
        model.functions.append(onnx_op.function_proto(OPSET))
    return model, w


_LIBRARY: dict = {}


def native_library() -> str:
    """The custom-op library, resolved (built if needed) once per run: editing the sources
    while a benchmark runs must not swap kernels half-way."""
    if "path" not in _LIBRARY:
        from sparsifiner.runtime.ort_native import native_library_path

        _LIBRARY["path"] = str(native_library_path())
    return _LIBRARY["path"]


def ort_session(model, threads: int, native: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if native:
        options.register_custom_ops_library(native_library())
    data = model if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(str(data) if isinstance(data, Path) else data, options,
                                providers=["CPUExecutionProvider"])


def torch_native(q, k, v, w, budget):
    """The predictor in torch and the native kernel through the torch binding."""
    import torch

    from sparsifiner.ops.cpu_binding import LIBRARY_NAMESPACE

    wq, wk, p_down, basis = (torch.from_numpy(w[x].astype(np.float32)) for x in ("wq", "wk", "p_down", "basis"))
    forward = getattr(torch.ops, LIBRARY_NAMESPACE).forward

    def run():
        with torch.no_grad():
            logits = (q[:, :, 1:] @ wq) @ ((k @ wk).transpose(-1, -2) @ p_down) * REDUCED ** -0.5
            a = torch.softmax(logits, -1)
            top = torch.topk(a, COEF_TOPK, dim=-1)
            coef = torch.zeros_like(a).scatter_(-1, top.indices, top.values)
            return forward(q, k, v, coef, basis, budget, HEAD_DIM ** -0.5, 1)

    return run


def bench_op(args) -> dict:
    import torch
    import torch.nn.functional as F

    from sparsifiner.ops.cpu_binding import load_cpu_binding

    torch.set_num_threads(args.threads)
    load_cpu_binding()
    results = []
    for n in args.ns:
        for budget_name in args.budgets:
            budget = 49 if budget_name == "49" else math.ceil(0.25 * (n - 1))
            if budget_name != "49" and budget == 49:
                continue  # keep 0.25 of 196 patches is 49: measured once
            for batch in args.batches:
                g = np.random.default_rng(n + batch)
                q, k, v = (g.standard_normal((batch, HEADS, n, HEAD_DIM)).astype(np.float32) for _ in range(3))
                tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
                dense = ort_session(dense_graph(n), args.threads, native=False)
                model, w = sparse_graph(n, budget, with_function=False)
                native = ort_session(model, args.threads, native=True)
                feeds = {"q": q, "k": k, "v": v}
                cands = {"ort_dense": lambda: dense.run(None, feeds),
                         "torch_sdpa": lambda: F.scaled_dot_product_attention(tq, tk, tv, scale=HEAD_DIM ** -0.5),
                         "ort_native": lambda: native.run(None, feeds),
                         "torch_native": torch_native(tq, tk, tv, w, budget)}
                big = batch * HEADS * n * n * 4 * 6 > args.function_max_bytes
                if not big:
                    function = ort_session(sparse_graph(n, budget, with_function=True)[0], args.threads, native=False)
                    cands["ort_function"] = lambda: function.run(None, feeds)
                repeats = max(3, min(args.repeats, int(args.budget_seconds / max(1e-3, _once(dense, feeds)))))
                res = interleaved(cands, repeats)
                res.update({"n": n, "budget": budget, "budget_rule": "keep 0.25" if budget_name != "49" else "fixed 49",
                            "batch": batch, "threads": args.threads,
                            "skipped": [] if not big else ["ort_function (memory: N x N scores per head)"]})
                res["ratios_vs_ort_dense"] = _ratios(res["candidates"], "ort_dense")
                if args.threads == 1:
                    res["cpu_ratios_vs_ort_dense"] = _ratios(res["cpu_candidates"], "ort_dense")
                results.append(res)
                print(_line(res), flush=True)
    return {"level": "op", "machine": machine(), "heads": HEADS, "head_dim": HEAD_DIM, "rank": RANK,
            "coef_topk": COEF_TOPK, "results": results}


def _once(session, feeds) -> float:
    start = time.perf_counter()
    session.run(None, feeds)
    return time.perf_counter() - start


def _ratios(cands: dict, base: str) -> dict:
    ref = cands[base]["median_ms"]
    return {name: ref / c["median_ms"] for name, c in cands.items() if name != base}


def _line(res: dict) -> str:
    head = " ".join(f"{k}={res[k]}" for k in ("n", "budget", "batch", "img_size") if k in res)
    body = ", ".join(f"{name} {c['median_ms']:.2f} ms [{c['p25_ms']:.2f}-{c['p75_ms']:.2f}]"
                     for name, c in res["candidates"].items())
    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in next(v for k, v in res.items() if k.startswith("ratios")).items())
    cpu = next((v for k, v in res.items() if k.startswith("cpu_ratios")), None)
    cpu = (" | cpu-time " + ", ".join(f"{k} {v:.2f}x" for k, v in cpu.items())) if cpu else ""
    return f"{head}: {body} | {ratios}{cpu} | load {res['load_before']:.1f}->{res['load_after']:.1f}"


# ------------------------------------------------------------------ end to end

E2E_VARIANTS = {"dense": ["--attention", "dense"], "keep25": ["--keep-rate", "0.25"], "b49": ["--budget", "49"],
                "keep25_topk": ["--keep-rate", "0.25", "--coef-prune", "topk"],
                "b49_topk": ["--budget", "49", "--coef-prune", "topk"]}
# A random predictor's softmax is flat (every coefficient ~1/32 < tau_coef): pruned, nothing
# is left and every score ties at 0. Scaling its channel reductions by this factor makes the
# logits peaky: ~3 coefficients per row survive the paper's threshold (a trained demo model
# keeps 2.5), and tau_basis = 0.02 prunes ~68 % of the random basis (the paper: 91 %).
SHARPEN = 20.0
SHARP_BASIS_THRESHOLD = 0.02


def export_path(folder: Path, size: int, variant: str) -> Path:
    return folder / f"deit_s_{size}_{variant}.onnx"


def sharpened_checkpoint(folder: Path, size: int, variant: str) -> Path:
    """Random DeiT-S weights with a sharpened, pruned predictor (see SHARPEN), saved for export."""
    import torch

    import sparsifiner
    from sparsifiner import SparsifinerSettings

    budget = {"budget": 49} if variant.startswith("b49") else {"keep_rate": 0.25}
    torch.manual_seed(0)
    model = sparsifiner.create_sparsifiner("deit_small_patch16_224", SparsifinerSettings(
        basis_threshold=SHARP_BASIS_THRESHOLD, **budget), img_size=size).eval()
    for module in model.modules():
        if hasattr(module, "predictor"):
            module.predictor.proj_q.weight.data.mul_(SHARPEN)
            module.predictor.proj_k.weight.data.mul_(SHARPEN)
    sparsifiner.prune_basis(model)
    path = folder / f"deit_s_{size}_{variant}.safetensors"
    sparsifiner.save_sparsifiner(model, path)
    return path


def ensure_export(folder: Path, size: int, variant: str) -> Path:
    """The export of one variant: dense and *_topk from random weights, keep25 and b49
    from a sharpened-predictor checkpoint (threshold pruning, as trained models use)."""
    path = export_path(folder, size, variant)
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        if variant in ("keep25", "b49"):
            source = ["--checkpoint", str(sharpened_checkpoint(folder, size, variant))]
            flags = []
        else:
            source = ["--model", "deit_small_patch16_224", "--img-size", str(size)]
            flags = E2E_VARIANTS[variant]
        cmd = [sys.executable, "-m", "sparsifiner.cli", "export", "--onnx", str(path), *source, *flags]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"export failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return path


def bench_e2e(args) -> dict:
    """Per image size and batch, one interleaved set: dense, native per variant, and the
    local function of the first variant (skipped at batch > 1 from --function-max-size)."""
    results = []
    folder = Path(args.onnx_dir)
    for size in args.sizes:
        dense = ort_session(ensure_export(folder, size, "dense"), args.threads, native=False)
        sparse = {v: ensure_export(folder, size, v) for v in args.variants}
        native = {v: ort_session(p, args.threads, native=True) for v, p in sparse.items()}
        function = ort_session(sparse[args.variants[0]], args.threads, native=False)
        for batch in args.batches:
            x = np.random.default_rng(size + batch).standard_normal((batch, 3, size, size)).astype(np.float32)
            feed = {dense.get_inputs()[0].name: x}
            cands = {"dense": lambda: dense.run(None, feed)}
            for v, sess in native.items():
                cands[f"native_{v}"] = (lambda s: lambda: s.run(None, {s.get_inputs()[0].name: x}))(sess)
            if not args.no_function and (size < args.function_max_size or batch == 1):
                cands[f"function_{args.variants[0]}"] = lambda: function.run(None, {function.get_inputs()[0].name: x})
            repeats = max(2, min(args.repeats, int(args.budget_seconds / max(1e-3, _once(dense, feed)))))
            res = interleaved(cands, repeats)
            res.update({"img_size": size, "tokens": (size // 16) ** 2 + 1, "batch": batch, "threads": args.threads,
                        "variants": {v: E2E_VARIANTS[v] for v in args.variants}})
            res["ratios_vs_dense"] = _ratios(res["candidates"], "dense")
            if args.threads == 1:
                res["cpu_ratios_vs_dense"] = _ratios(res["cpu_candidates"], "dense")
            results.append(res)
            print(_line(res), flush=True)
    return {"level": "e2e", "machine": machine(), "results": results,
            "model": ("deit_small_patch16_224, random weights; keep25/b49: predictor sharpened x"
                      f"{SHARPEN} (threshold-pruned, ~3 coefficients per row), tau_basis {SHARP_BASIS_THRESHOLD}; "
                      "*_topk: --coef-prune topk (8 per row) on the plain random predictor")}


# ------------------------------------------------------------------ plot

def plot(paths: list, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [json.loads(Path(p).read_text()) for p in paths]
    fig, axes = plt.subplots(1, len(data), figsize=(7 * len(data), 4.5), squeeze=False)
    for ax, d in zip(axes[0], data):
        key = "ratios_vs_ort_dense" if d["level"] == "op" else "ratios_vs_dense"
        key = ("cpu_" + key) if "cpu_" + key in d["results"][0] else key
        labels, series = [], {}
        for r in d["results"]:
            label = (f"N={r['n']}\nB={r['budget']} b{r['batch']}" if d["level"] == "op"
                     else f"{r['img_size']}px\nb{r['batch']}")
            labels.append(label)
            for name in r[key]:
                series.setdefault(name, {})[label] = r[key][name]
        width = 0.8 / max(1, len(series))
        for i, (name, vals) in enumerate(sorted(series.items())):
            xs = [j + i * width for j, lab in enumerate(labels) if lab in vals]
            ax.bar(xs, [vals[lab] for lab in labels if lab in vals], width, label=name)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, fontsize=6, rotation=90)
        ax.set_ylabel(("CPU-time" if key.startswith("cpu_") else "wall-clock") + " speed-up vs dense (median)")
        ax.set_yscale("log")
        ax.set_title(f"{d['level']}: {d['machine']['cpu']}, {d['results'][0]['threads']} threads")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


TARGETS = [  # (level, label, match, candidate, target)
    ("op", "op N=4097 B=49 vs ORT dense", lambda r: r["n"] == 4097 and r["budget"] == 49, "ort_native", 5.0),
    ("op", "op N=1025 keep 0.25 vs ORT dense", lambda r: r["n"] == 1025 and r["budget"] == 256, "ort_native", 1.3),
    ("op", "op N=4097 keep 0.25 vs ORT dense", lambda r: r["n"] == 4097 and r["budget"] == 1024, "ort_native", 1.3),
    ("e2e", "e2e 224 px vs dense", lambda r: r["img_size"] == 224, "native_keep25", 1.0),
    ("e2e", "e2e 1024 px keep 0.25 vs dense", lambda r: r["img_size"] == 1024, "native_keep25", 1.15),
    ("e2e", "e2e 1024 px B=49 vs dense", lambda r: r["img_size"] == 1024, "native_b49", 2.0),
    ("e2e", "e2e 1024 px local function vs dense", lambda r: r["img_size"] == 1024, "function_keep25", None),
]


def table(paths: list) -> str:
    """Markdown: every target, per batch, wall-clock and (1 thread) CPU-time ratios."""
    data = [json.loads(Path(p).read_text()) for p in paths]
    lines = ["| target | batch | threads | ratio (wall, median) | ratio (CPU time) | goal | met | load |",
             "|---|---|---|---|---|---|---|---|"]
    for level, label, match, cand, goal in TARGETS:
        for d in (d for d in data if d["level"] == level):
            key = "ratios_vs_ort_dense" if level == "op" else "ratios_vs_dense"
            for r in (r for r in d["results"] if match(r) and cand in r[key]):
                wall, cpu = r[key][cand], r.get("cpu_" + key, {}).get(cand)
                met = "-" if goal is None else ("yes" if (cpu or wall) >= goal else "no")
                lines.append(f"| {label} | {r['batch']} | {r['threads']} | {wall:.2f}x | "
                             f"{'-' if cpu is None else f'{cpu:.2f}x'} | {'-' if goal is None else f'>= {goal}x'} | "
                             f"{met} | {r['load_before']:.1f}-{r['load_after']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    op = sub.add_parser("op", help="one attention layer")
    op.add_argument("--ns", type=lambda s: [int(x) for x in s.split(",")], default=[197, 577, 1025, 4097])
    op.add_argument("--budgets", type=lambda s: s.split(","), default=["49", "keep"])
    op.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    op.add_argument("--function-max-bytes", type=float, default=4e9, help="skip ort_function above this N x N size")
    e2e = sub.add_parser("e2e", help="whole DeiT-S exports")
    e2e.add_argument("--onnx-dir", required=True, help="where exports are made or found (never commit them)")
    e2e.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[224, 384, 512, 1024])
    e2e.add_argument("--variants", type=lambda s: s.split(","), default=["keep25", "b49"])
    e2e.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    e2e.add_argument("--function-max-size", type=int, default=1024, help="batch 8 runs the function path below this")
    e2e.add_argument("--no-function", action="store_true", help="skip the local-function candidate (memory, time)")
    for p in (op, e2e):
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--repeats", type=int, default=9)
        p.add_argument("--budget-seconds", type=float, default=30.0, help="fewer repeats for slow configurations")
        p.add_argument("--out", required=True)
    pl = sub.add_parser("plot")
    pl.add_argument("paths", nargs="+")
    pl.add_argument("--png", required=True)
    tb = sub.add_parser("table", help="the targets of issue 11 as a markdown table")
    tb.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    if args.cmd == "plot":
        plot(args.paths, args.png)
        return
    if args.cmd == "table":
        print(table(args.paths))
        return
    result = bench_op(args) if args.cmd == "op" else bench_e2e(args)
    result["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else " ".join(argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
