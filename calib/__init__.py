"""Explicit Q/DQ calibration of exported graphs for TensorRT (``sparsifiner.calib``).

``calibrate(CalibrateSettings(onnx_path, output_path, data="demo", mode="int8"))`` runs
ONNX Runtime's static quantisation with TensorRT's placement (symmetric, per-channel
weights, Q/DQ on MatMul/Gemm/Conv inputs), keeps the custom op and the connectivity
predictor in float, and reports the Q/DQ graph against the float one in ONNX Runtime.
Modules: ``settings`` (CalibrateSettings), ``data`` (calibration and report images),
``graph`` (nodes kept in float, opset), ``quantize`` (the run), ``report`` (accuracy).
Names load lazily so importing the package does not import onnxruntime.
"""
from sparsifiner._namespace import require_namespace

require_namespace(__name__, "sparsifiner.calib")

from sparsifiner._lazy import lazy_getattr

_LAZY = {
    "CalibrateSettings": "sparsifiner.calib.settings",
    "calibrate": "sparsifiner.calib.quantize",
    "format_calibration": "sparsifiner.calib.report",
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
