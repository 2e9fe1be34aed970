"""Export and check in one step: the demo's last stage.

``export_and_validate(checkpoint)`` writes the custom-op graph beside a trained
checkpoint (``sparsifiner.onnx``) and validates it on every demo validation digit in
ONNX Runtime against PyTorch, once through the graph's local function and once through
the op itself (the onnxruntime-extensions op, when that optional extra is installed).
``sparsifiner.workflows.run_demo`` takes it as its export stage.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from sparsifiner.data.feeds import demo_batches
from sparsifiner.export.exporter import export_onnx
from sparsifiner.export.settings import ExportSettings
from sparsifiner.model.source import ModelSource
from sparsifiner.runtime.validate import ValidateSettings, validate_onnx

DEMO_BATCH = 40


def export_and_validate(checkpoint: Path, onnx_name: str = "sparsifiner.onnx") -> dict:
    """{"path", "passed", "validation": {ort_op: report}} for the checkpoint's custom-op export."""
    onnx_path = Path(checkpoint).with_name(onnx_name)
    export_onnx(ExportSettings(source=ModelSource(checkpoint=str(checkpoint)), attention="custom"), onnx_path)
    # The op itself runs through onnxruntime-extensions, an optional extra (sparsifiner[ort-ext]).
    ops = ("function", "extensions") if importlib.util.find_spec("onnxruntime_extensions") else ("function",)
    reports = {op: validate_onnx(ValidateSettings(onnx_path=str(onnx_path), inputs="demo", batch=DEMO_BATCH,
                                                  num_batches=demo_batches(DEMO_BATCH), ort_op=op))
               for op in ops}
    return {"path": str(onnx_path), "passed": all(r["passed"] for r in reports.values()), "validation": reports}
