"""Validate a built engine: TensorRT, ONNX Runtime and PyTorch on the same inputs.

``validate_engine(EngineValidateSettings(...))`` is ``validate --onnx`` with one more
runner. PyTorch (fp32, the reference) and ONNX Runtime (the engine's ONNX file, named in
its sidecar) run exactly as ``sparsifiner.runtime.validate`` runs them, selection-aware
when the graph records its op inputs (the keys ONNX Runtime selected are compared with
PyTorch's); then the engine (``TrtRunner``) runs on the same feeds and its logits are
compared with PyTorch's by the same comparator and tolerances. Passed only when both are.
The engine's own key selection is not read out (its coefficient tensors are not engine
outputs): for it the report has the logits' agreement only.

Everything that can be checked without a GPU is checked first (the engine file, its
sidecar, backend version, plugin library, batch range, the ONNX file); then a missing
GPU is a one-line error.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sparsifiner.errors import SparsifinerError
from sparsifiner.runtime.validate import check_comparison_options

# bf16 keeps 8 mantissa bits (fp16: 11): the looser default for bf16 engines.
BF16_TOLERANCES = (6e-2, 6e-2)


@dataclass(frozen=True)
class EngineValidateSettings:
    """What ``sparsifiner validate --engine`` compares (the validate --onnx options, plus the engine).

    onnx_path: default the ONNX file recorded in the engine's sidecar.
    plugin_library: default the library recorded in the sidecar.
    source: a ModelSource for the PyTorch side (default: the ONNX file's metadata).
    """

    engine_path: str
    onnx_path: Optional[str] = None
    plugin_library: Optional[str] = None
    source: Optional[Any] = None
    inputs: str = "random"
    batch: Optional[int] = None
    num_batches: int = 2
    seed: int = 0
    ort_op: str = "function"
    atol: Optional[float] = None
    rtol: Optional[float] = None

    def __post_init__(self):
        check_comparison_options(self)


def engine_onnx_path(engine_path, onnx_path: Optional[str] = None) -> str:
    """The ONNX file to validate an engine against: the given one, else the one its sidecar records."""
    from sparsifiner.runtime.engine_file import read_sidecar

    if onnx_path:
        return onnx_path
    if not Path(engine_path).is_file():
        raise SparsifinerError(f"engine file not found: {engine_path}")
    return read_sidecar(engine_path)["onnx"]["path"]


def _batch(settings: EngineValidateSettings, sidecar: dict, fixed: Optional[int]) -> int:
    profile = sidecar.get("profile")
    if fixed is not None:
        if settings.batch not in (None, fixed):
            raise SparsifinerError(f"the engine has a fixed batch of {fixed}: use --batch {fixed}")
        return fixed
    low, high = (profile["min"], profile["max"]) if profile else (1, 1 << 30)
    batch = settings.batch or min(max(4, low), high)
    if not low <= batch <= high:
        raise SparsifinerError(f"--batch {batch} is outside the engine's profile [{low}, {high}]")
    return batch


def validate_engine(settings: EngineValidateSettings) -> dict:
    """Run PyTorch, ONNX Runtime and the engine; compare both with PyTorch; the report has ``passed``."""
    import torch

    from sparsifiner.artifacts import OUTPUT_NAME, read_metadata
    from sparsifiner.data.feeds import build_feeds
    from sparsifiner.model.source import ModelSource
    from sparsifiner.runtime.compare import DEFAULT_TOLERANCES, compare_outputs
    from sparsifiner.runtime.runners import OrtRunner, OrtSessionLoader, TorchModelLoader, TorchRunner, run_all
    from sparsifiner.runtime.trt_runner import TrtRunner, check_engine
    from sparsifiner.runtime.validate import run_selection_aware

    engine, library = check_engine(settings.engine_path, settings.plugin_library)
    sidecar = engine.sidecar
    onnx_path = settings.onnx_path or sidecar["onnx"]["path"]
    if not Path(onnx_path).is_file():
        raise SparsifinerError(f"the engine's ONNX file {onnx_path} is gone: pass --onnx")
    meta = read_metadata(onnx_path)
    info, preprocess = meta["sparsifiner"], meta["preprocess"]
    if "attention" not in info:
        raise SparsifinerError(f"{onnx_path} has no Sparsifiner metadata: export it with `sparsifiner export`")
    dtype = sidecar["inputs"][0]["dtype"] if sidecar.get("inputs") else info.get("dtype", "fp32")
    dtype = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(dtype, dtype)
    default_atol, default_rtol = DEFAULT_TOLERANCES.get(dtype, BF16_TOLERANCES if dtype == "bf16" else
                                                        DEFAULT_TOLERANCES["fp32"])
    atol = default_atol if settings.atol is None else settings.atol
    rtol = default_rtol if settings.rtol is None else settings.rtol
    batch = _batch(settings, sidecar, info.get("batch") if isinstance(info.get("batch"), int) else None)
    if len(tuple(preprocess.get("input_size") or ())) != 3:
        raise SparsifinerError(f"{onnx_path} lacks preprocess.input_size metadata: export it again")
    if not torch.cuda.is_available():
        raise SparsifinerError("validate --engine runs the engine on a CUDA GPU and none is visible; the engine file, "
                               "its sidecar and plugin library check out")
    feeds = build_feeds(settings.inputs, preprocess, batch, settings.num_batches, settings.seed)
    source = settings.source or ModelSource.from_dict(info["source"])
    engine_runner = TrtRunner(settings.engine_path, library)
    engine_runner.activate()  # deserialise before the slow CPU runs
    coef_names = list((info.get("op_inputs") or {}).get("coef") or []) if info["attention"] != "dense" else []
    torch_runner = TorchRunner(TorchModelLoader(source, info["attention"]), reference_op=True)
    ort_runner = OrtRunner(OrtSessionLoader(onnx_path, settings.ort_op, extra_outputs=coef_names))
    if coef_names:
        run = run_selection_aware(torch_runner, ort_runner, feeds, coef_names, atol, rtol)
    else:
        run = run_all([torch_runner, ort_runner], feeds)
    engine_run = run_all([engine_runner], feeds)
    reference = {OUTPUT_NAME: run["outputs"][TorchRunner.name][OUTPUT_NAME]}
    candidates = {OrtRunner.name: run["outputs"][OrtRunner.name], TrtRunner.name: engine_run["outputs"][TrtRunner.name]}
    comparisons = {name: [c.to_dict() for c in compare_outputs(reference, outputs, atol, rtol)]
                   for name, outputs in candidates.items()}
    passed = {name: all(c["passed"] for c in outs) for name, outs in comparisons.items()}
    selection = same = None
    if coef_names:
        same = [c.to_dict() for c in compare_outputs(
            {OUTPUT_NAME: run["outputs"]["pytorch_same_selection"][OUTPUT_NAME]}, run["outputs"][OrtRunner.name],
            atol, rtol)]
        selection = run["selection"].to_dict()
        passed[OrtRunner.name] = all(c["passed"] for c in same) and selection["coef_outside_tolerance"] == 0
    return {
        "engine": str(settings.engine_path),
        "onnx": str(onnx_path),
        "backend": sidecar["backend"],
        "plugin": library,
        "attention": info["attention"],
        "dtype": dtype,
        "model": (info.get("arch") or {}).get("model"),
        "budget": info.get("budget"),
        "inputs": feeds.describe() if hasattr(feeds, "describe") else settings.inputs,
        "batch": batch,
        "samples": int(reference[OUTPUT_NAME].shape[0]),
        "atol": atol,
        "rtol": rtol,
        "seconds": {k: round(v, 3) for k, v in {**run["seconds"], **engine_run["seconds"]}.items()},
        "comparisons": comparisons,
        "onnxruntime_selection": selection,
        "onnxruntime_same_selection": same,
        "passed_by_runner": passed,
        "passed": all(passed.values()),
    }


def format_engine_report(report: dict) -> str:
    lines = [f"{report['engine']}: {report['backend']['name']} {report['backend']['version']} engine of "
             f"{report['model']} ({report['attention']}, {report['dtype']}, budget {report['budget']})",
             f"inputs: {report['inputs']}, batch {report['batch']}, {report['samples']} samples",
             f"tolerance: |x - torch| <= {report['atol']:g} + {report['rtol']:g} * |torch|",
             f"{'runner':<12} {'output':<8} {'max abs':>10} {'p50':>10} {'p90':>10} {'p99':>10} {'top-1':>7} {'bad':>6}"
             "  result"]
    for runner, outputs in report["comparisons"].items():
        for out in outputs:
            q = out["quantiles"]
            top1 = "-" if out["top1"] is None else f"{100 * out['top1']:.1f}%"
            lines.append(f"{runner:<12} {out['name']:<8} {out['max_abs']:>10.3g} {q['p50']:>10.3g} {q['p90']:>10.3g} "
                         f"{q['p99']:>10.3g} {top1:>7} {out['mismatches']:>6}  {'PASS' if out['passed'] else 'FAIL'}")
    if report.get("onnxruntime_selection"):
        from sparsifiner.runtime.validate import format_selection

        lines.append("onnxruntime " + format_selection(report["onnxruntime_selection"]))
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines)
