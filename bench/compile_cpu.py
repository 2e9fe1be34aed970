"""torch.compile (inductor) against eager for a pruned Sparsifiner in sparse mode, on CPU.

    python bench/compile_cpu.py                                   # deit_tiny, batches 1 and 8
    python bench/compile_cpu.py --model sparsifiner_deit_small_patch16_224 --batches 1 --repeats 31

The model is built through timm's registry with random weights, pruned (the deployable
configuration). Each batch size is compiled first (``fullgraph=True``, static shapes),
checked against eager, warmed up, then eager and compiled calls are interleaved (the
order alternates every repeat) so both see the same machine load; medians and minima
are printed, and ``--json`` prints them as JSON. On a shared machine, compare the minima
too and say what else was running.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def measure(model, compiled, x, repeats: int) -> dict:
    import torch

    with torch.no_grad():
        start = time.perf_counter()
        out = compiled(x)
        compile_s = time.perf_counter() - start
        error = float((out - model(x)).abs().max())
        for _ in range(3):
            model(x)
            compiled(x)
        times: dict = {"eager": [], "compiled": []}
        for i in range(repeats):
            order = (("eager", model), ("compiled", compiled))
            for name, fn in order if i % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - start)
    eager, comp = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return {"batch": x.shape[0], "first_call_s": round(compile_s, 1), "max_abs_diff": error,
            "eager_median_ms": round(1e3 * eager, 2), "compiled_median_ms": round(1e3 * comp, 2),
            "eager_min_ms": round(1e3 * min(times["eager"]), 2),
            "compiled_min_ms": round(1e3 * min(times["compiled"]), 2), "speedup_median": round(eager / comp, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sparsifiner_deit_tiny_patch16_224")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import timm
    import torch

    import sparsifiner  # noqa: F401 - registers the sparsifiner_* models with timm
    from sparsifiner.model import prune_basis

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model)
    prune_basis(model)
    model.eval()
    rows = []
    for batch in args.batches:
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, dynamic=False)
        x = torch.randn(batch, 3, *model.patch_embed.img_size)
        rows.append(measure(model, compiled, x, args.repeats))
        if not args.json:
            r = rows[-1]
            print(f"batch {batch}: eager {r['eager_median_ms']} ms, compiled {r['compiled_median_ms']} ms (medians; "
                  f"minima {r['eager_min_ms']} / {r['compiled_min_ms']}), speed-up {r['speedup_median']}x, "
                  f"max |diff| {r['max_abs_diff']:.1e}, first compiled call {r['first_call_s']} s")
    info = {"model": args.model, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "loadavg": os.getloadavg(), "rows": rows}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"torch {info['torch']}, {info['threads']} threads, load average {info['loadavg']}")


if __name__ == "__main__":
    main()
