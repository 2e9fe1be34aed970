"""Lazy package attributes: names resolve to their module on first use (PEP 562).

Keeps ``import sparsifiner`` (and the CLI's ``--help``) free of torch, timm and onnx.
"""
from importlib import import_module


def lazy_getattr(package: str, table: dict):
    """A module ``__getattr__`` that imports ``table[name]`` and returns its ``name``."""

    def __getattr__(name):
        if name in table:
            return getattr(import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
