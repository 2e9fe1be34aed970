"""Sparsifiner: learned instance-dependent sparse attention for timm vision transformers.

The public API is imported lazily so ``import sparsifiner`` (and the CLI's ``--help``)
stays instant: torch and timm load only when a model function is first used.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "SparsifinerSettings": "sparsifiner.settings",
    "SparsifinerError": "sparsifiner.errors",
    "sparsify": "sparsifiner.model.sparsify",
    "create_sparsifiner": "sparsifiner.model.sparsify",
    "set_mode": "sparsifiner.model.sparsify",
    "prune_basis": "sparsifiner.model.sparsify",
    "collect_aux": "sparsifiner.model.sparsify",
    "resize_sparsifiner": "sparsifiner.model.resize",
    "save_sparsifiner": "sparsifiner.model.io",
    "load_sparsifiner": "sparsifiner.model.io",
    "count_flops": "sparsifiner.model.flops",
    "topk_masked_attention": "sparsifiner.ops",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparsifiner' has no attribute {name!r}")
