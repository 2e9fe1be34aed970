"""Model level: sparsify a timm ViT, resize it, save and load it, count its FLOPs."""
from sparsifiner.model.sparsify import (
    budget_of,
    collect_aux,
    count_parameters,
    create_sparsifiner,
    create_timm_model,
    num_tokens_of,
    predictor_parameters,
    prune_basis,
    set_mode,
    settings_of,
    sparse_layers,
    sparsify,
)

__all__ = [
    "budget_of",
    "collect_aux",
    "count_parameters",
    "create_sparsifiner",
    "create_timm_model",
    "num_tokens_of",
    "predictor_parameters",
    "prune_basis",
    "set_mode",
    "settings_of",
    "sparse_layers",
    "sparsify",
]
