"""How far a Q/DQ graph is from its float graph, measured in ONNX Runtime on CPU.

``compare_float_quantized`` runs both graphs on the report images and returns top-1
agreement, top-1 accuracy of each (labelled data whose classes match the model's
outputs) and the logit error of the quantised graph (the runtime layer's comparator,
``sparsifiner.runtime.compare``, against the float logits).

The Q/DQ graph runs with ONNX Runtime's graph optimisations off: the graph as written
(weights and activations rounded to the 8-bit grid, arithmetic in fp32), which is what
TensorRT computes up to accumulation order; it is also the only way ONNX Runtime's CPU
provider runs fp8 Q/DQ. The float graph runs as ``sparsifiner validate`` runs it.
"""
from __future__ import annotations

import numpy as np

from sparsifiner.errors import SparsifinerError


def quantized_session(model):
    """An ONNX Runtime CPU session for a Q/DQ ModelProto, graph optimisations off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SparsifinerError(f"ONNX Runtime cannot load the Q/DQ graph: {first}") from exc


def _logits(session, feed, count: int, bar) -> np.ndarray:
    from sparsifiner.artifacts import OUTPUT_NAME

    outs = []
    for batch in feed:
        outs.append(session.run([OUTPUT_NAME], batch)[0])
        if bar is not None:
            bar.update(len(next(iter(batch.values()))))
    return np.concatenate(outs)[:count].astype(np.float32)


def compare_float_quantized(float_model, qdq_model, data, settings) -> dict:
    """The report of ``calibrate`` (see the module docstring); ``data`` is a calib.data.CalibrationData."""
    from sparsifiner.calib.quantize import _progress
    from sparsifiner.runtime.compare import compare_arrays
    from sparsifiner.runtime.ort import create_session

    feed, count = data.report, data.report.count
    bar = _progress(2 * count, "report (float, quantised)", settings.progress)
    try:
        reference = _logits(create_session(float_model, "function"), feed, count, bar)
        candidate = _logits(quantized_session(qdq_model), feed, count, bar)
    finally:
        if bar is not None:
            bar.close()
    stats = compare_arrays("logits", reference, candidate, atol=0.0, rtol=0.0)
    report = {
        "images": count,
        "data": feed.describe(),
        "held_out": not data.same_images,
        "runtime": "ONNX Runtime CPU, Q/DQ graph unoptimised",
        "top1_agreement": stats.top1,
        "disagreements": int(np.sum(reference.argmax(1) != candidate.argmax(1))),
        "logit_error": {"max_abs": stats.max_abs, "mean_abs": stats.mean_abs, **stats.quantiles},
        "logit_scale": float(np.abs(reference).mean()),
        "accuracy": None,
    }
    classes = reference.shape[1]
    if data.labels is not None and data.classes == classes:
        labels = data.labels[:count]
        report["accuracy"] = {"float": float(np.mean(reference.argmax(1) == labels)),
                              "quantized": float(np.mean(candidate.argmax(1) == labels))}
    elif data.labels is not None:
        report["accuracy_note"] = f"the data has {data.classes} classes and the model {classes} outputs: no accuracy"
    return report


def format_calibration(summary: dict) -> str:
    """The human summary ``sparsifiner calibrate`` prints."""
    s, r = summary["settings"], summary["report"]
    floats = summary["float_nodes"]
    kept = ", ".join(f"{v} {k}" for k, v in floats.items() if v) or "none"
    qdq = summary["qdq_nodes"]
    lines = [
        f"wrote {summary['output']} and its sidecar ({summary['seconds']:.1f} s)",
        f"  {s['mode']} Q/DQ ({s['method']}) of the {summary['attention']} graph of {summary['model']}, opset "
        f"{summary['opset']}: {qdq['QuantizeLinear']} Q / {qdq['DequantizeLinear']} DQ nodes on MatMul/Gemm/Conv "
        f"inputs; kept in float: {kept} nodes",
        f"  calibrated on {summary['calibration']['data']} ({summary['calibration']['seconds']:.1f} s)",
        f"report on {r['data']}" + ("" if r["held_out"] else " (the calibration source)") + f"; {r['runtime']}",
        f"  {'graph':<18} {'top-1 acc':>10} {'agreement':>10} {'max abs':>9} {'mean abs':>9} {'p99 abs':>9}",
    ]
    acc = r.get("accuracy")
    lines.append(f"  {'float':<18} {_pct(acc['float']) if acc else '-':>10} {'-':>10} {'-':>9} {'-':>9} {'-':>9}")
    err = r["logit_error"]
    label = f"{s['mode']} ({s['method']})"
    lines.append(f"  {label:<18} {_pct(acc['quantized']) if acc else '-':>10} {_pct(r['top1_agreement']):>10} "
                 f"{err['max_abs']:>9.3g} {err['mean_abs']:>9.3g} {err['p99']:>9.3g}")
    if acc:
        lines.append(f"  top-1 change {100 * (acc['quantized'] - acc['float']):+.1f} points; "
                     f"{r['disagreements']} of {r['images']} predictions differ from float")
    elif r.get("accuracy_note"):
        lines.append(f"  {r['accuracy_note']}")
    return "\n".join(lines)


def _pct(value) -> str:
    return f"{100 * value:.1f} %"
