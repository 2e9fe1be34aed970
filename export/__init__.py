"""ONNX export of Sparsifiner models and its validation in ONNX Runtime (``sparsifiner.export``).

``export_onnx(ExportSettings(...), path)`` writes one of three graph forms (custom op
with a local-function fallback, standard-op decomposition, dense teacher);
``validate_onnx(ValidateSettings(...))`` compares the file in ONNX Runtime with the
PyTorch model. Names load lazily so importing the package does not import torch.
"""
from sparsifiner._namespace import require_namespace

require_namespace(__name__, "sparsifiner.export")

from sparsifiner._lazy import lazy_getattr

_LAZY = {
    "ExportSettings": "sparsifiner.export.settings",
    "ModelSource": "sparsifiner.export.settings",
    "export_onnx": "sparsifiner.export.exporter",
    "format_export": "sparsifiner.export.exporter",
    "ValidateSettings": "sparsifiner.export.validate",
    "validate_onnx": "sparsifiner.export.validate",
    "format_report": "sparsifiner.export.validate",
    "source_for_validation": "sparsifiner.export.validate",
    "read_metadata": "sparsifiner.export.metadata",
    "compare_outputs": "sparsifiner.export.compare",
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
