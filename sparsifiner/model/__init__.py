"""Model level: sparsify a timm ViT, set its budget, resize it, save and load it, count its FLOPs.

Names load lazily (``sparsifiner._lazy``), so constants such as ``sparsifiner.model.zoo``'s
import without torch.
"""
from sparsifiner._lazy import lazy_getattr

_NAMES = ("apply_settings", "budget_of", "collect_aux", "count_parameters", "create_sparsifiner", "create_timm_model",
          "num_tokens_of", "predictor_parameters", "prune_basis", "set_budget", "set_mode", "settings_of",
          "sparse_layers", "sparsify")
_LAZY = {name: "sparsifiner.model.sparsify" for name in _NAMES}
_LAZY["ModelSource"] = "sparsifiner.model.source"

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
