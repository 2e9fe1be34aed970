"""What ``sparsifiner calibrate`` does: one frozen settings object, checked on creation.

Modes and methods follow ONNX Runtime's static quantisation (``onnxruntime.quantization``):
int8 calibrates with MinMax, Entropy (KL divergence over a 2048-bin histogram, TensorRT's
legacy entropy calibrator) or Percentile (99.999 % of |x|); fp8 (E4M3FN) only with
Distribution, the one method ONNX Runtime supports for float types.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sparsifiner.errors import SparsifinerError

MODES = ("int8", "fp8")
METHODS = {"int8": ("minmax", "entropy", "percentile"), "fp8": ("distribution",)}
DEFAULT_METHOD = {"int8": "minmax", "fp8": "distribution"}
# Op types whose inputs get Q/DQ (TensorRT's placement: the inputs of the layers with weights;
# their outputs stay float, so a Q/DQ pair sits on each MatMul/Gemm/Conv input only).
QUANTIZED_OP_TYPES = ("MatMul", "Gemm", "Conv")
DEFAULT_SAMPLES = 256
DEFAULT_BATCH = 16
# Below this many calibration images a histogram or a min/max says little about the data.
MIN_SAMPLES = 8


@dataclass(frozen=True)
class CalibrateSettings:
    """One calibration run.

    onnx_path: an export with Sparsifiner metadata (custom, decomposed or dense form).
    output_path: the Q/DQ graph (a JSON sidecar goes beside it).
    data: "demo" (calibrate on the digits' train split, report on the 360 val digits) or an
        image folder: with train/ and val/ inside, calibrate on train/ and report on val/
        (labelled by class folder); else calibrate on and report on the folder itself.
    mode: int8 or fp8; method: see METHODS (None: the mode's default).
    samples: calibration images (the first ``samples``, in a fixed order).
    batch: images per calibration and report batch (a fixed-batch graph takes its own).
    eval_limit: report on at most this many images (None: all).
    progress: a progress bar on stderr.
    """

    onnx_path: str
    output_path: str
    data: str = "demo"
    mode: str = "int8"
    method: Optional[str] = None
    samples: int = DEFAULT_SAMPLES
    batch: int = DEFAULT_BATCH
    eval_limit: Optional[int] = None
    progress: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise SparsifinerError(f"--mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        method = self.method or DEFAULT_METHOD[self.mode]
        known = sorted({m for ms in METHODS.values() for m in ms})
        if method not in known:
            raise SparsifinerError(f"--method must be one of {', '.join(known)}; got {method!r}")
        if method not in METHODS[self.mode]:
            raise SparsifinerError(f"--mode {self.mode} calibrates with --method {' or '.join(METHODS[self.mode])}, "
                                   f"not {method} (ONNX Runtime's {self.mode} support)")
        object.__setattr__(self, "method", method)
        if self.samples < MIN_SAMPLES:
            raise SparsifinerError(f"--samples must be at least {MIN_SAMPLES}, got {self.samples}")
        if self.batch < 1:
            raise SparsifinerError(f"--batch-size must be >= 1, got {self.batch}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise SparsifinerError(f"--limit must be >= 1, got {self.eval_limit}")
        if Path(self.output_path).resolve() == Path(self.onnx_path).resolve():
            raise SparsifinerError("-o names the input graph: write the Q/DQ graph to another file")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
