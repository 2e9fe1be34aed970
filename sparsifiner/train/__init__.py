"""Training: the two-phase Sparsifiner recipe (and the demo's dense teacher), evaluation, recipes.

The CLI builds a ``TrainSettings`` from a recipe (``build_train_settings``) and calls
``run_training``, ``evaluate_checkpoints``, ``run_demo`` or ``run_regulariser_study``.
"""
from sparsifiner._lazy import lazy_getattr

_LAZY = {
    "TrainSettings": "sparsifiner.train.settings",
    "PhaseSettings": "sparsifiner.train.settings",
    "build_train_settings": "sparsifiner.train.recipe",
    "load_recipe": "sparsifiner.train.recipe",
    "run_training": "sparsifiner.train.runner",
    "evaluate_model": "sparsifiner.train.evaluate",
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
