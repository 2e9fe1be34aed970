"""Model level: sparsify a timm ViT, set its budget, resize it, save and load it, count its FLOPs.

Names load lazily (``sparsifiner._lazy``): importing a submodule such as
``sparsifiner.model.timm_models`` (what the timm hook runs when timm is first imported,
possibly while ``sparsifiner.layers`` is itself still importing timm) must not pull in
the layers through this package's ``__init__``.
"""
from sparsifiner._lazy import lazy_getattr

_SPARSIFY = "sparsifiner.model.sparsify"
_LAZY = {
    "ModelSource": "sparsifiner.model.source",
    **{name: _SPARSIFY for name in (
        "apply_settings", "budget_of", "collect_aux", "count_parameters", "create_sparsifiner", "create_timm_model",
        "num_tokens_of", "predictor_parameters", "prune_basis", "set_budget", "set_mode", "settings_of",
        "sparse_layers", "sparsify")},
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
