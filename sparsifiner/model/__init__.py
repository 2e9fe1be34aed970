"""Model level: sparsify a timm ViT, set its budget, resize it, save and load it, count its FLOPs."""
from sparsifiner.model.source import ModelSource
from sparsifiner.model.sparsify import (
    apply_settings,
    budget_of,
    collect_aux,
    count_parameters,
    create_sparsifiner,
    create_timm_model,
    num_tokens_of,
    predictor_parameters,
    prune_basis,
    set_budget,
    set_mode,
    settings_of,
    sparse_layers,
    sparsify,
)

__all__ = [
    "ModelSource",
    "apply_settings",
    "budget_of",
    "collect_aux",
    "count_parameters",
    "create_sparsifiner",
    "create_timm_model",
    "num_tokens_of",
    "predictor_parameters",
    "prune_basis",
    "set_budget",
    "set_mode",
    "settings_of",
    "sparse_layers",
    "sparsify",
]
