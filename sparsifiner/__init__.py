"""Sparsifiner: learned instance-dependent sparse attention for timm vision transformers.

The public API is imported lazily so ``import sparsifiner`` (and the CLI's ``--help``)
stays instant: torch and timm load only when a model function is first used. Importing
the package also puts the ``sparsifiner_*`` models in timm's registry, now if timm is
loaded, else the moment it is (``sparsifiner._timm_hook``), without importing timm.
"""
from sparsifiner._lazy import lazy_getattr
from sparsifiner._timm_hook import install as _install_timm_hook

__version__ = "0.1.0"

_LAZY = {
    "SparsifinerSettings": "sparsifiner.settings",
    "SparsifinerError": "sparsifiner.errors",
    "sparsify": "sparsifiner.model.sparsify",
    "create_sparsifiner": "sparsifiner.model.sparsify",
    "set_mode": "sparsifiner.model.sparsify",
    "set_budget": "sparsifiner.model.sparsify",
    "prune_basis": "sparsifiner.model.sparsify",
    "collect_aux": "sparsifiner.model.sparsify",
    "resize_sparsifiner": "sparsifiner.model.resize",
    "save_sparsifiner": "sparsifiner.model.io",
    "load_sparsifiner": "sparsifiner.model.io",
    "save_hub": "sparsifiner.model.io",
    "count_flops": "sparsifiner.model.flops",
    "topk_masked_attention": "sparsifiner.ops",
}

__all__ = ["__version__", *_LAZY]

__getattr__ = lazy_getattr(__name__, _LAZY)

_install_timm_hook()
