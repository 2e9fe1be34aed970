"""ONNX export of Sparsifiner models (``sparsifiner.export``).

``export_onnx(ExportSettings(source=ModelSource(...)), path)`` writes one of three
graph forms (custom op with a local-function fallback, standard-op decomposition,
dense teacher). Validation, runners and artifact metadata live in the library layer
(``sparsifiner.runtime``, ``sparsifiner.artifacts``). Names load lazily so importing
the package does not import torch.
"""
from sparsifiner._namespace import require_namespace

require_namespace(__name__, "sparsifiner.export")

from sparsifiner._lazy import lazy_getattr

_LAZY = {
    "ExportSettings": "sparsifiner.export.settings",
    "ModelSource": "sparsifiner.model.source",
    "export_onnx": "sparsifiner.export.exporter",
    "format_export": "sparsifiner.export.exporter",
    "export_and_validate": "sparsifiner.export.verify",
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
