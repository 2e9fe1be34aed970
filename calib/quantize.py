"""Explicit Q/DQ calibration of an exported graph with ONNX Runtime: ``sparsifiner calibrate``.

``calibrate(CalibrateSettings(...))`` writes a Q/DQ graph TensorRT builds as an int8 or
fp8 engine (TensorRT 11 has no implicit calibrators: quantisation is in the graph):

1. The graph is checked (Sparsifiner metadata, opset 19 for Q/DQ; an opset-18 export is
   relabelled, see ``calib.graph``) and the nodes that stay in float are found: the
   custom nodes, the connectivity predictor, and in decomposed graphs the op's body.
2. Calibration runs ONNX Runtime's calibrators (``onnxruntime.quantization.calibrate``)
   on the float graph, a chunk of batches at a time so histograms of large images fit in
   memory, with a progress bar. Entropy uses 2048 histogram bins and 128 quantised bins
   (TensorRT's entropy calibrator; ONNX Runtime's default of 128/128 reduces it to min/max).
3. ``quantize_static`` places Q/DQ the TensorRT way from the computed ranges: symmetric
   (zero point 0), per-channel weights, Q/DQ on the inputs of MatMul/Gemm/Conv only (their
   outputs and the biases stay float: TensorRT refuses int32 bias Q/DQ).
4. The result is checked (no Q/DQ on a float node's inputs or outputs), saved with IR
   version 10, the export's metadata and a ``sparsifiner.quantization`` entry, and
   compared with the float graph in ONNX Runtime (``calib.report``). Graph and JSON
   sidecar are written atomically only after all of that succeeded.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

from sparsifiner.errors import SparsifinerError
from sparsifiner.calib.settings import QUANTIZED_OP_TYPES, CalibrateSettings

QUANT_KEY = "sparsifiner.quantization"
SIDECAR_FORMAT = "sparsifiner-calibration/1"
# Images per collect_data call: ONNX Runtime's histogram calibrators hold every
# intermediate output of a call in memory before binning it.
CHUNK_IMAGES = 64


class FeedReader:
    """An ONNX Runtime CalibrationDataReader over a feed's batches, ``limit`` batches per pass,
    with a progress bar. ``has_more()`` looks one batch ahead, so no pass starts empty."""

    def __init__(self, batches, bar=None):
        self.batches, self.bar, self.limit = iter(batches), bar, None
        self.next = next(self.batches, None)

    def has_more(self) -> bool:
        return self.next is not None

    def get_next(self):
        if self.next is None or (self.limit is not None and self.limit <= 0):
            return None
        batch, self.next = self.next, next(self.batches, None)
        if self.limit is not None:
            self.limit -= 1
        if self.bar is not None:
            self.bar.update(len(next(iter(batch.values()))))
        return batch

    def __iter__(self):
        return iter(self.get_next, None)


@contextlib.contextmanager
def quiet():
    """Silence ONNX Runtime's quantisation chatter: prints on stdout (which --json owns) and
    root-logger warnings (the pre-processing advice)."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _progress(total: int, label: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="img", leave=False, dynamic_ncols=True)


def quant_types(mode: str):
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if mode == "int8" else QuantType.QFLOAT8E4M3FN


def calibration_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}[method]


CALIBRATOR_OPTIONS = {
    "minmax": {"symmetric": True},
    "entropy": {"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"symmetric": True, "num_bins": 2048, "percentile": 99.999},
    "distribution": {"num_bins": 2048, "scenario": "same"},
}


def activation_inputs(model, exclude) -> set:
    """The activation inputs of the nodes that get Q/DQ: the tensors calibration must range."""
    skip = set(exclude)
    weights = {init.name for init in model.graph.initializer}
    return {name for node in model.graph.node if node.op_type in QUANTIZED_OP_TYPES and node.name not in skip
            for name in node.input if name and name not in weights}


def compute_ranges(model_path: Path, feed, settings: CalibrateSettings, folder: Path, needed: set):
    """ONNX Runtime's TensorsData for the inputs of the quantised op types, from ``feed``."""
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(model_path, list(QUANTIZED_OP_TYPES),
                                   augmented_model_path=str(folder / "augmented.onnx"),
                                   calibrate_method=calibration_method(settings.method),
                                   extra_options=CALIBRATOR_OPTIONS[settings.method])
    if getattr(calibrator, "tensors_to_calibrate", None):
        # Histogram methods bin every input and output of every MatMul/Gemm/Conv (the predictor's
        # too); the threshold search costs seconds per tensor, so keep the ones Q/DQ will use.
        calibrator.tensors_to_calibrate = set(calibrator.tensors_to_calibrate) & needed
    bar = _progress(feed.count, f"calibrating ({settings.mode} {settings.method})", settings.progress)
    reader = FeedReader(feed, bar)
    per_chunk = max(1, CHUNK_IMAGES // feed.batch)
    try:
        with quiet():
            while reader.has_more():
                reader.limit = per_chunk
                calibrator.collect_data(reader)  # histograms and ranges merge across calls
            return calibrator.compute_data()
    except SparsifinerError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SparsifinerError(f"calibration failed in ONNX Runtime: {first}") from exc
    finally:
        if bar is not None:
            bar.close()


def quantize_model(model_path: Path, ranges, exclude: list, settings: CalibrateSettings, folder: Path):
    """``quantize_static`` with precomputed ranges (a calibration cache); returns the Q/DQ ModelProto."""
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    cache = folder / "ranges.json"
    save_tensors_data(ranges, cache)
    out = folder / "qdq.onnx"
    qtype = quant_types(settings.mode)
    try:
        with quiet():
            quantize_static(
                str(model_path), str(out), calibration_data_reader=None, calibration_cache_path=str(cache),
                quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=True,
                activation_type=qtype, weight_type=qtype, nodes_to_exclude=exclude,
                calibrate_method=calibration_method(settings.method),
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                               "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES)})
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SparsifinerError(f"ONNX Runtime could not quantise the graph: {first}") from exc
    return restrict_to_layers(onnx.load(str(out)))


def restrict_to_layers(model):
    """Rewire other readers of a quantised activation (ONNX Runtime shares one Q/DQ pair among all
    readers: a Shape of the input, say) back to the float tensor, so Q/DQ feed MatMul/Gemm/Conv only."""
    producers = {o: n for n in model.graph.node for o in n.output}
    original = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in producers \
                and producers[node.input[0]].op_type == "QuantizeLinear":
            original[node.output[0]] = producers[node.input[0]].input[0]
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OP_TYPES:
            for i, name in enumerate(node.input):
                if name in original:
                    node.input[i] = original[name]
    return model


def qdq_on_float_nodes(model, names) -> list:
    """Q/DQ nodes that read a float node's output or feed a float node's input (should be none)."""
    names = set(names)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    produced = {o for n in model.graph.node if n.name in names for o in n.output}
    read = {i for n in model.graph.node if n.name in names for i in n.input}
    return sorted(n.name for n in qdq if set(n.input) & produced or set(n.output) & read)


def finish_model(qdq, source, info: dict, settings: CalibrateSettings, floats, relabelled: bool):
    """Metadata (the export's, plus the quantisation record) and IR version on the Q/DQ graph."""
    from sparsifiner.calib.graph import QDQ_IR_VERSION

    kept = {p.key: p.value for p in source.metadata_props}
    if relabelled:
        kept["sparsifiner.opset"] = "19"
    kept[QUANT_KEY] = json.dumps({"mode": settings.mode, "method": settings.method, "samples": settings.samples,
                                  "data": settings.data, "op_types": list(QUANTIZED_OP_TYPES),
                                  "float_nodes": floats.counts(), "symmetric": True, "per_channel_weights": True,
                                  "source_sparsifiner_version": info["sparsifiner"].get("version")})
    del qdq.metadata_props[:]
    for key, value in kept.items():
        qdq.metadata_props.add(key=key, value=value)
    qdq.ir_version = min(qdq.ir_version, QDQ_IR_VERSION)
    return qdq


def calibrate(settings: CalibrateSettings) -> dict:
    """Calibrate, quantise, check, compare and write; returns the summary (also in the sidecar)."""
    import os

    import onnx

    from sparsifiner.artifacts import atomic_write, sidecar_path, write_json
    from sparsifiner.calib.data import calibration_data
    from sparsifiner.calib.graph import float_nodes, name_nodes, qdq_opset_model, sparsifiner_info
    from sparsifiner.calib.report import compare_float_quantized
    from sparsifiner.runtime.ort import load_model_proto
    from sparsifiner.runtime.plugin_build import file_sha256

    start = time.perf_counter()
    source = load_model_proto(settings.onnx_path)
    info = sparsifiner_info(source, settings.onnx_path)
    if QUANT_KEY in {p.key for p in source.metadata_props}:
        raise SparsifinerError(f"{settings.onnx_path} is already quantised: calibrate the float export")
    out = Path(settings.output_path)
    if out.is_dir() or not out.parent.is_dir():
        raise SparsifinerError(f"cannot write {out}: name a file in an existing folder")
    if not os.access(out.parent, os.W_OK):
        raise SparsifinerError(f"cannot write to {out.parent}: choose a writable output folder")
    meta = info["sparsifiner"]
    fixed = meta.get("batch") if isinstance(meta.get("batch"), int) else None
    data = calibration_data(settings.data, info["preprocess"], settings.samples, fixed or settings.batch,
                            fixed_batch=fixed is not None, eval_limit=settings.eval_limit)
    model = qdq_opset_model(source)
    relabelled = model is not source
    if not relabelled:
        model = onnx.ModelProto()
        model.CopyFrom(source)
    name_nodes(model)
    coef_names = list((meta.get("op_inputs") or {}).get("coef") or []) if meta["attention"] != "dense" else []
    floats = float_nodes(model, coef_names)
    with tempfile.TemporaryDirectory(prefix="sparsifiner-calib-") as tmp:
        folder = Path(tmp)
        prepared = folder / "float.onnx"
        onnx.save(model, str(prepared))
        calib_start = time.perf_counter()
        ranges = compute_ranges(prepared, data.calibration, settings, folder,
                                activation_inputs(model, floats.all()))
        calib_seconds = time.perf_counter() - calib_start
        qdq = quantize_model(prepared, ranges, floats.all(), settings, folder)
    bad = qdq_on_float_nodes(qdq, floats.all())
    if bad:
        raise SparsifinerError(f"quantisation put Q/DQ on nodes that must stay float ({bad[0]}): please report this")
    qdq = finish_model(qdq, source, info, settings, floats, relabelled)
    report = compare_float_quantized(model, qdq, data, settings)
    counts = {op: sum(n.op_type == op for n in qdq.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}
    summary = {
        "format": SIDECAR_FORMAT,
        "onnx": str(Path(settings.onnx_path).resolve()),
        "onnx_sha256": file_sha256(settings.onnx_path),
        "output": str(out.resolve()),
        "attention": meta["attention"],
        "model": (meta.get("arch") or {}).get("model"),
        "opset": 19 if relabelled else meta.get("opset"),
        "settings": settings.to_dict(),
        "calibration": {"images": data.calibration.count, "data": data.calibration.describe(),
                        "seconds": round(calib_seconds, 2), "tensors": len(ranges.data)},
        "float_nodes": floats.counts(),
        "qdq_nodes": counts,
        "report": report,
        "seconds": round(time.perf_counter() - start, 2),
    }
    data_bytes = qdq.SerializeToString()
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data_bytes))
    try:
        write_json(sidecar_path(out), summary)
    except Exception:
        out.unlink(missing_ok=True)
        raise
    return summary
