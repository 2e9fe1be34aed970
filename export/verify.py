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


# --- selection agreement between implementations of the op -------------------------------------

def capture_op_inputs(model, images, batch: int = 40) -> dict:
    """{block coefficient name: (coef [S, H, N-c, R] fp32, basis [R, N] fp32, budget)} for a
    Sparsifiner in sparse mode over ``images`` [S, C, H, W]: what each block's op consumed."""
    import torch

    from sparsifiner.model.sparsify import capture_coefficients, coefficient_names, sparse_layers

    chunks: dict = {}
    with torch.inference_mode(), capture_coefficients(model) as found:
        for start in range(0, len(images), batch):
            model(images[start:start + batch])
            for name, coef in found.items():
                chunks.setdefault(name, []).append(coef.float())
    layers = dict(zip(coefficient_names(model), sparse_layers(model)))
    return {name: (torch.cat(parts), layers[name].predictor.sparse_basis().float(), layers[name].budget)
            for name, parts in chunks.items()}


def ort_op(backend: str, dtype, budget: int, cls_rows: int = 1, scale: float = 1.0):
    """``run_op(q, k, v, coef, basis)`` through a one-node ONNX model in ONNX Runtime ("function",
    "extensions" or another backend of sparsifiner.runtime.ort); q, k, v, basis in ``dtype``."""
    import numpy as np
    import onnx
    import torch

    from sparsifiner.export.onnx_op import single_node_model
    from sparsifiner.runtime.ort import create_session

    elem = {torch.float32: onnx.TensorProto.FLOAT, torch.float16: onnx.TensorProto.FLOAT16}[dtype]
    sessions: dict = {}

    def run(q, k, v, coef, basis):
        key = (tuple(q.shape), coef.shape[-1], coef.dtype)
        if key not in sessions:
            coef_elem = onnx.TensorProto.FLOAT16 if coef.dtype == torch.float16 else onnx.TensorProto.FLOAT
            model = single_node_model(tuple(q.shape), coef.shape[-1], budget, scale, cls_rows, elem, coef_elem)
            sessions[key] = create_session(model, backend)
        feed = {"q": q, "k": k, "v": v, "coef": coef, "basis": basis.to(q.dtype)}
        return sessions[key].run(None, {n: np.ascontiguousarray(t.numpy()) for n, t in feed.items()})[0]

    return run


def selection_agreement(captured: dict, implementations: dict, dtypes=("float32", "float16"),
                        head_dim: int = 64, limit=None) -> dict:
    """Compare the keys each implementation selects with the reference's, block by block.

    implementations: {name: factory(dtype, budget, cls_rows) -> run_op(q, k, v, coef, basis)};
    a factory may return None to skip a dtype. ``limit``: {name: images} to probe only the
    first images with a slow implementation (an emulator). Returns {dtype: {name: {"rows",
    "rows_differing"}}}; any difference is a bug once the inputs are on the value grids.
    """
    import torch

    from sparsifiner.runtime.selection import probe_selection, selected_keys

    report: dict = {}
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for name, factory in implementations.items():
            counts = {"rows": 0, "rows_differing": 0}
            for coef, basis, budget in captured.values():
                run = factory(dtype, budget, 1)
                if run is None:
                    counts = None
                    break
                images = (limit or {}).get(name) or coef.shape[0]
                c = coef[:images].to(dtype)
                expected = selected_keys(c.float(), basis.to(dtype).float(), budget)
                got = probe_selection(run, c, basis.to(dtype), budget, 1, head_dim, dtype)
                counts["rows"] += int(expected.shape[:-1].numel())
                counts["rows_differing"] += int((got != expected).any(-1).sum())
            report.setdefault(dtype_name, {})[name] = counts
    return report
