"""Validate an exported graph: PyTorch and ONNX Runtime on the same inputs.

Built like Polygraphy's ``run --onnxrt`` comparison from the runtime layer's pieces:
feeds (``sparsifiner.data.feeds``), runners (``sparsifiner.runtime.runners``) and the
comparator (``sparsifiner.runtime.compare``).

The PyTorch side always runs in fp32: for an fp16 graph the report is the error the
deployment adds to the spec, hence the looser fp16 default tolerance. Which PyTorch
model to run comes from the file's metadata (the export's source) unless a checkpoint
or model name is given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sparsifiner.artifacts import OUTPUT_NAME, read_metadata
from sparsifiner.data.feeds import build_feeds
from sparsifiner.errors import SparsifinerError
from sparsifiner.model.source import ModelSource
from sparsifiner.runtime.compare import DEFAULT_TOLERANCES, compare_outputs
from sparsifiner.runtime.runners import OrtRunner, OrtSessionLoader, TorchModelLoader, TorchRunner, run_all

DEFAULT_DYNAMIC_BATCH = 4


@dataclass(frozen=True)
class ValidateSettings:
    """What ``sparsifiner validate`` compares.

    source: the PyTorch model; None takes the one recorded in the file's metadata.
    inputs: "random" (standard normal, seeded), "demo" (the digits of sparsifiner.data)
        or a folder of images (preprocessed with the file's timm data config).
    batch: batch size (default: the graph's fixed size, else 4); num_batches: how many
        random or demo batches. ort_op: "auto", "function", "native" or "extensions"
        (see sparsifiner.runtime.ort; "auto" takes the native kernel when it is built).
    atol / rtol: None picks the default for the graph's dtype (compare.DEFAULT_TOLERANCES).
    """

    onnx_path: str
    source: Optional[ModelSource] = None
    inputs: str = "random"
    batch: Optional[int] = None
    num_batches: int = 2
    seed: int = 0
    ort_op: str = "auto"
    atol: Optional[float] = None
    rtol: Optional[float] = None

    def __post_init__(self):
        check_comparison_options(self)


def check_comparison_options(settings) -> None:
    """The checks every validation's settings share (batch, num_batches, atol, rtol)."""
    if settings.batch is not None and settings.batch < 1:
        raise SparsifinerError(f"--batch must be >= 1, got {settings.batch}")
    if settings.num_batches < 1:
        raise SparsifinerError(f"--num-batches must be >= 1, got {settings.num_batches}")
    for name in ("atol", "rtol"):
        value = getattr(settings, name)
        if value is not None and not value >= 0:
            raise SparsifinerError(f"--{name} must be >= 0, got {value}")


def source_for_validation(onnx_path, *, checkpoint: Optional[str] = None, model_name: Optional[str] = None,
                          pretrained: bool = False, seed: Optional[int] = None, img_size: Optional[int] = None,
                          settings: Optional[dict] = None) -> Optional[ModelSource]:
    """The PyTorch model to validate against, from flags; None keeps the export's source.

    ``--model NAME`` naming the model the file was exported from keeps the export's
    seed, settings and timm kwargs, with the given flags on top; another name starts
    from defaults. A checkpoint brings its own settings.
    """
    from sparsifiner.settings import SparsifinerSettings

    settings = settings or {}
    if checkpoint is None and model_name is None:
        if settings or pretrained or seed is not None or img_size is not None:
            raise SparsifinerError("model flags need --model NAME (or --checkpoint PATH) to apply to")
        return None
    if checkpoint is not None:
        return ModelSource(checkpoint=checkpoint, img_size=img_size,
                           settings=SparsifinerSettings(**settings) if settings else None, pretrained=pretrained)
    base = read_metadata(onnx_path)["sparsifiner"].get("source") or {}
    if base.get("model_name") == model_name:
        recorded = ModelSource.from_dict(base)
        merged = (recorded.settings or SparsifinerSettings()).replace(**settings) if settings else recorded.settings
        return ModelSource(model_name=model_name, pretrained=pretrained or recorded.pretrained,
                           seed=recorded.seed if seed is None else seed,
                           img_size=recorded.img_size if img_size is None else img_size,
                           settings=merged, timm_kwargs=recorded.timm_kwargs)
    return ModelSource(model_name=model_name, pretrained=pretrained, seed=seed or 0, img_size=img_size,
                       settings=SparsifinerSettings(**settings) if settings else None)



def validate_onnx(settings: ValidateSettings) -> dict:
    """Run PyTorch and ONNX Runtime, compare, and return the report (``passed`` inside)."""
    import onnxruntime  # noqa: F401  (fail early with the import error if missing)

    from sparsifiner.runtime import ort as ort_runtime

    meta = read_metadata(settings.onnx_path)
    info, preprocess = meta["sparsifiner"], meta["preprocess"]
    if "attention" not in info:
        raise SparsifinerError(f"{settings.onnx_path} has no Sparsifiner metadata: export it with `sparsifiner export`")
    source = settings.source or ModelSource.from_dict(info["source"])
    dtype = info.get("dtype", "fp32")
    default_atol, default_rtol = DEFAULT_TOLERANCES.get(dtype, DEFAULT_TOLERANCES["fp32"])
    atol = default_atol if settings.atol is None else settings.atol
    rtol = default_rtol if settings.rtol is None else settings.rtol

    fixed = info.get("batch") if isinstance(info.get("batch"), int) else None
    batch = settings.batch or fixed or DEFAULT_DYNAMIC_BATCH
    if fixed is not None and batch != fixed:
        raise SparsifinerError(f"the graph has a fixed batch of {fixed}: use --batch {fixed} or export with --batch dynamic")
    input_size = tuple(preprocess.get("input_size") or ())
    if len(input_size) != 3:
        raise SparsifinerError(f"{settings.onnx_path} lacks preprocess.input_size metadata: export it again")

    feeds = build_feeds(settings.inputs, preprocess, batch, settings.num_batches, settings.seed)

    import onnx

    graph = onnx.load(settings.onnx_path, load_external_data=False)
    ort_op = ort_runtime.resolve_op_backend(settings.ort_op, graph)
    calls_before = ort_runtime.EXTENSIONS_OP_CALLS["count"]
    coef_names = list((info.get("op_inputs") or {}).get("coef") or []) if info["attention"] != "dense" else []
    native_before = _native_calls() if ort_op == "native" else 0
    torch_runner = TorchRunner(TorchModelLoader(source, info["attention"]), reference_op=True)
    ort_runner = OrtRunner(OrtSessionLoader(settings.onnx_path, ort_op, extra_outputs=coef_names))
    if coef_names:
        run = run_selection_aware(torch_runner, ort_runner, feeds, coef_names, atol, rtol)
    else:
        run = run_all([torch_runner, ort_runner], feeds)
    reference, candidate = run["outputs"][TorchRunner.name], run["outputs"][OrtRunner.name]
    comparisons = compare_outputs({OUTPUT_NAME: reference[OUTPUT_NAME]}, candidate, atol, rtol)
    report = {
        "onnx": str(settings.onnx_path),
        "attention": info["attention"],
        "dtype": dtype,
        "model": (info.get("arch") or {}).get("model"),
        "source": source.kind,
        "trained": info.get("trained"),
        "budget": info.get("budget"),
        "ort_op": ort_op,
        "extensions_op_calls": ort_runtime.EXTENSIONS_OP_CALLS["count"] - calls_before,
        "native_op_calls": _native_calls() - native_before if ort_op == "native" else 0,
        "torch_op": "reference",
        "inputs": feeds.describe() if hasattr(feeds, "describe") else settings.inputs,
        "batch": batch,
        "samples": int(next(iter(reference.values())).shape[0]),
        "atol": atol,
        "rtol": rtol,
        "seconds": {k: round(v, 3) for k, v in run["seconds"].items()},
        "outputs": [c.to_dict() for c in comparisons],
        "selection": None,
        "outputs_same_selection": None,
        "passed": all(c.passed for c in comparisons),
    }
    if coef_names:
        same = compare_outputs({OUTPUT_NAME: run["outputs"]["pytorch_same_selection"][OUTPUT_NAME]}, candidate, atol, rtol)
        selection = run["selection"].to_dict()
        report.update(selection=selection, outputs_same_selection=[c.to_dict() for c in same],
                      passed=all(c.passed for c in same) and selection["coef_outside_tolerance"] == 0)
    return report


def run_selection_aware(torch_runner, candidate, feeds, coef_names, atol: float, rtol: float) -> dict:
    """Per feed: PyTorch, the candidate (with its op coefficients as extra outputs), and PyTorch
    again with the candidate's coefficients injected in every block. The selection statistics
    compare the candidate's coefficients with those PyTorch computes in that last run, where
    both sides attend to the same keys upstream, so a flip in one block does not cascade."""
    import time

    import numpy as np

    from sparsifiner.runtime.selection import SelectionStats, update_selection

    for runner in (torch_runner, candidate):
        runner.activate()
    stats = SelectionStats()
    names = (torch_runner.name, candidate.name, "pytorch_same_selection")
    logits: dict = {name: [] for name in names}
    seconds = dict.fromkeys(names[:2], 0.0)
    for feed in feeds:
        start = time.perf_counter()
        own = torch_runner.infer(feed)
        seconds[torch_runner.name] += time.perf_counter() - start
        start = time.perf_counter()
        got = candidate.infer(feed)
        seconds[candidate.name] += time.perf_counter() - start
        coefs = {name: got[name] for name in coef_names}
        torch_runner.capture = True  # the coefficients PyTorch computes while attending to the candidate's keys
        try:
            same = torch_runner.infer({**feed, **coefs})
        finally:
            torch_runner.capture = False
        update_selection(stats, torch_runner.model, {k: same[k] for k in coef_names}, coefs, atol, rtol)
        for name, out in zip(names, (own, got, same)):
            logits[name].append(np.asarray(out[OUTPUT_NAME]))
    outputs = {name: {OUTPUT_NAME: np.concatenate(arrays)} for name, arrays in logits.items()}
    return {"outputs": outputs, "seconds": seconds, "selection": stats}


def _native_calls() -> int:
    from sparsifiner.runtime.ort_native import native_op_calls

    return native_op_calls()


def format_report(report: dict) -> str:
    """A short human table of a validation report."""
    lines = [
        f"{report['onnx']}: {report['attention']} {report['dtype']} graph of {report['model']} "
        f"(budget {report['budget']}, {'trained' if report['trained'] else 'random predictor'})",
        f"inputs: {report['inputs']}, batch {report['batch']}, {report['samples']} samples; "
        f"ONNX Runtime op: {report['ort_op']}" + (f" ({report['extensions_op_calls']} extensions op calls)"
                                                 if report["ort_op"] == "extensions" else "")
        + (f" (C++ kernel, {report['native_op_calls']} calls)" if report["ort_op"] == "native" else "")
        + f"; PyTorch op: {report.get('torch_op', 'reference')}",
        f"tolerance: |ort - torch| <= {report['atol']:g} + {report['rtol']:g} * |torch|",
        f"{'output':<22} {'max abs':>10} {'max rel':>10} {'p50':>10} {'p90':>10} {'p99':>10} {'top-1':>7} {'bad':>6}  result",
    ]
    rows = [("", out) for out in report["outputs"]]
    rows += [(" (same keys)", out) for out in report.get("outputs_same_selection") or []]
    for label, out in rows:
        q = out["quantiles"]
        top1 = "-" if out["top1"] is None else f"{100 * out['top1']:.1f}%"
        lines.append(
            f"{out['name'] + label:<22} {out['max_abs']:>10.3g} {out['max_rel']:>10.3g} {q['p50']:>10.3g} "
            f"{q['p90']:>10.3g} {q['p99']:>10.3g} {top1:>7} {out['mismatches']:>6}  {'PASS' if out['passed'] else 'FAIL'}"
        )
    selection = report.get("selection")
    if selection:
        lines.append(format_selection(selection))
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines)


def format_selection(selection: dict) -> str:
    """One line on the selected keys: rows that differ and how far the coefficients are apart."""
    verdict = ("coefficients agree" if selection["coef_outside_tolerance"] == 0 else
               f"{selection['coef_outside_tolerance']} coefficients OUTSIDE tolerance (a predictor bug?)")
    return (f"selected keys: {selection['rows_differing']} of {selection['rows']} query rows differ from PyTorch's "
            f"({100 * selection['share_differing']:.2g} %; coefficients max abs diff {selection['coef_max_abs']:.2g}, "
            f"{verdict}); '(same keys)' compares with PyTorch attending to ONNX Runtime's keys")
