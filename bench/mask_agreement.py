"""Mask agreement on trained models: every implementation of the op selects the reference's keys.

For each checkpoint (a trained Sparsifiner on the digits), the op inputs each block sees on
all 360 val digits are captured (sparsifiner.export.verify.capture_op_inputs), and the keys
each implementation selects are read out of its outputs (sparsifiner.runtime.selection.
probe_selection) and compared with the PyTorch reference's, row by row, at fp32 and fp16
inputs:

  reference       the eager reference op itself (sparsifiner.ops.reference), read the same way
  ort_function    the ONNX local function in ONNX Runtime (what `export` writes by default)
  ort_extensions  the onnxruntime-extensions Python op (when onnxruntime-extensions is installed)
  ort_native      the native C++ CPU op in ONNX Runtime (needs a C++ compiler and ORT headers)
  torch_native    the same kernel through torch
  cuda_emulator   the CUDA kernels run on the CPU emulator (tests/trt_plugins/emulator), one
                  run per algorithm in --algos ("auto" picks rowwise at fp32 and tiled2d at
                  fp16 here), on the first --emulator-images digits: it is slow (needs the
                  CUDA toolkit's headers)

With exact scores (sparsifiner.ops.grid) any differing row is a bug. Checkpoints trained with
float scores (exact_scores false) are reported but not judged: near-ties may flip there.

    python bench/mask_agreement.py --study runs/selection_study        # the study's exact-score models
    python bench/mask_agreement.py runs/demo/phase2.safetensors        # any checkpoints

Writes bench/results/mask_agreement.json; exits 1 when an exact-score model disagrees.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The selection study's folders whose models take exact scores (the op's contract).
EXACT_VARIANTS = ("threshold_exact_index", "topk_exact_index", "threshold_exact_keepbest")
ALGOS = ("auto", "tiled", "rowwise", "tiled2d")


def study_checkpoints(study: Path) -> list[Path]:
    found = sorted(study.glob("seed*/*/phase2.safetensors"))
    picked = [p for p in found if p.parent.name in EXACT_VARIANTS]
    if not picked:
        raise SystemExit(f"bench/mask_agreement.py: no exact-score phase 2 checkpoints under {study}/seed*/"
                         f"{{{','.join(EXACT_VARIANTS)}}}: run bench/selection_study.py first")
    return picked


def emulator_factory(kernels, algo: str):
    import torch
    from trt_kernel_cases import Case

    def factory(dtype, budget, cls_rows):
        if algo in ("tiled", "tiled2d") and dtype == torch.float32:
            return None  # the tensor-core kernels take fp16 and bf16 only
        return lambda q, k, v, coef, basis: kernels.run(Case(q, k, v, coef, basis, budget, 1.0, cls_rows), algo=algo)[0]

    return factory


def implementations(algos) -> tuple[dict, dict]:
    """({name: factory}, {name: why it is skipped})."""
    import importlib.util

    from sparsifiner.errors import SparsifinerError
    from sparsifiner.export.verify import ort_op
    from sparsifiner.ops import cpu_binding, native_build
    from sparsifiner.ops.reference import topk_masked_attention_reference
    from sparsifiner.runtime import ort_native

    impls = {"reference": lambda dtype, budget, cls: (
                 lambda q, k, v, coef, basis: topk_masked_attention_reference(q, k, v, coef, basis, budget, 1.0, cls)),
             "ort_function": lambda dtype, budget, cls: ort_op("function", dtype, budget, cls)}
    skipped = {}
    if importlib.util.find_spec("onnxruntime_extensions"):
        impls["ort_extensions"] = lambda dtype, budget, cls: ort_op("extensions", dtype, budget, cls)
    else:
        skipped["ort_extensions"] = "onnxruntime-extensions is not installed"
    try:
        if native_build.find_compiler() is None:
            raise SparsifinerError("no C++ compiler (g++ or clang++)")
        ort_native.native_library_path()
        cpu_binding.load_cpu_binding()
        impls["ort_native"] = lambda dtype, budget, cls: ort_op("native", dtype, budget, cls)
        impls["torch_native"] = lambda dtype, budget, cls: (
            lambda q, k, v, coef, basis: cpu_binding.topk_masked_attention_cpu(q, k, v, coef, basis, budget, 1.0, cls))
    except SparsifinerError as exc:
        skipped["ort_native"] = skipped["torch_native"] = str(exc)
    kernels = None
    if algos:
        sys.path.insert(0, str(ROOT / "tests" / "trt_plugins"))
        from emulated_kernel import load_emulator

        kernels = load_emulator()
    for algo in algos:
        if kernels is None:
            skipped[f"cuda_emulator_{algo}"] = "no CUDA toolkit headers (set CUDA_HOME)"
        else:
            impls[f"cuda_emulator_{algo}"] = emulator_factory(kernels, algo)
    return impls, skipped


def check(checkpoint: Path, impls: dict, emulator_images: int, dtypes) -> dict:
    import torch

    from sparsifiner.data import build_datasets
    from sparsifiner.export.verify import capture_op_inputs, selection_agreement
    from sparsifiner.model.source import load_checkpoint

    model, kind = load_checkpoint(checkpoint)
    if kind != "sparsifiner":
        raise SystemExit(f"bench/mask_agreement.py: {checkpoint} is a dense model; pass Sparsifiner checkpoints")
    exact = bool(model.sparsifiner_settings.exact_scores)
    _, val = build_datasets("digits", model, augment=False)
    images = torch.stack([val[i][0] for i in range(len(val))])
    captured = capture_op_inputs(model, images)
    head_dim = 64  # every implementation supports it (the kernels' largest head dim)
    limit = {name: emulator_images for name in impls if name.startswith("cuda_emulator")}
    start = time.time()
    report = selection_agreement(captured, impls, dtypes=dtypes, head_dim=head_dim, limit=limit)
    differing = sum(c["rows_differing"] for by_impl in report.values() for c in by_impl.values() if c)
    return {"checkpoint": str(checkpoint), "exact_scores": exact, "images": len(images),
            "coef_prune": model.sparsifiner_settings.coef_prune, "blocks": len(captured),
            "rows_differing": differing, "agree": differing == 0, "seconds": round(time.time() - start, 1),
            "report": report}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--study", type=Path, help="a bench/selection_study.py output folder: check its exact-score models")
    parser.add_argument("--emulator-images", type=int, default=36,
                        help="val digits the CUDA emulator sees (about 9 s per digit at fp32 + fp16 on 2 CPU "
                             "cores, demo model); the other implementations see all 360")
    parser.add_argument("--algos", nargs="+", choices=ALGOS, default=["auto"], help="CUDA kernel algorithms to emulate")
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "float16"), default=["float32", "float16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "mask_agreement.json")
    args = parser.parse_args(argv)
    checkpoints = list(args.checkpoints) + (study_checkpoints(args.study) if args.study else [])
    if not checkpoints:
        parser.error("pass checkpoints or --study")
    if args.emulator_images < 1:
        parser.error("--emulator-images must be at least 1")
    missing = [str(p) for p in checkpoints if not p.exists()]
    if missing:
        raise SystemExit(f"bench/mask_agreement.py: no such checkpoint: {', '.join(missing)}")
    sys.path.insert(0, str(ROOT))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from sparsifiner.errors import SparsifinerError

    impls, skipped = implementations(args.algos)
    rows = []
    for checkpoint in checkpoints:
        try:
            rows.append(check(checkpoint, impls, args.emulator_images, args.dtypes))
        except SparsifinerError as exc:
            raise SystemExit(f"bench/mask_agreement.py: {exc}") from None
        r = rows[-1]
        print(f"{'agree' if r['agree'] else 'DIFFER':6} {r['rows_differing']:>7} rows differ  "
              f"exact={r['exact_scores']!s:5} {r['coef_prune']:<9} {r['seconds']:>7.1f} s  {checkpoint}", flush=True)
    judged = [r for r in rows if r["exact_scores"]]
    result = {"command": " ".join(["python", "bench/mask_agreement.py", *(argv if argv is not None else sys.argv[1:])]),
              "implementations": sorted(impls), "skipped": skipped, "emulator_images": args.emulator_images,
              "all_agree": all(r["agree"] for r in judged), "models_judged": len(judged), "models": rows}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.results.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.results)
    print(f"{len(judged)} exact-score models: {'all implementations select the same keys' if result['all_agree'] else 'DISAGREEMENT'}"
          f"; skipped: {skipped or 'none'}")
    return 0 if result["all_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
