"""Put Sparsifiner's models in timm's registry as soon as timm is imported, without importing it.

``import sparsifiner`` must stay free of torch and timm (the CLI's ``--help`` is instant),
yet after it ``timm.list_models("sparsifiner_*")`` should list the variants whichever of
the two packages was imported first. ``install()`` (called by ``sparsifiner/__init__``)
therefore does one of two things:

* timm is already imported: register now (torch and timm are loaded anyway);
* otherwise: add a finder at the front of ``sys.meta_path`` that, when ``timm`` itself is
  imported, lets the normal machinery find and execute it and then registers the models,
  before ``import timm`` returns. The finder removes itself once timm has run (a bare
  ``importlib.util.find_spec("timm")``, as availability checks do, leaves it in place),
  so it costs nothing afterwards, and it never imports timm on its own.

The alternative, asking users to ``import sparsifiner.model.timm_models`` (which also
works and is what the hook runs), is the kind of step people forget; timm offers no
plugin entry point to hang this on. A failure to register is reported as a warning and
never breaks ``import timm``.
"""
from __future__ import annotations

import importlib.abc
import sys
import threading
import warnings

REGISTRY_MODULE = "sparsifiner.model.timm_models"

_lock = threading.Lock()


def register_now() -> None:
    """Import the registry module (it registers on import); warn instead of raising."""
    try:
        importlib.import_module(REGISTRY_MODULE).register_timm_models()
    except Exception as exc:  # noqa: BLE001 - a broken registration must not break timm
        warnings.warn(f"sparsifiner could not register its timm models ({type(exc).__name__}: {exc})",
                      RuntimeWarning, stacklevel=2)


class _RegisteringLoader(importlib.abc.Loader):
    """timm's own loader; registers the Sparsifiner models once timm's ``__init__`` has run."""

    def __init__(self, loader, finder):
        self._loader = loader
        self._finder = finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        with _lock:
            if self._finder in sys.meta_path:
                sys.meta_path.remove(self._finder)
        register_now()

    def __getattr__(self, name):  # get_data, get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _TimmFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the real ``timm`` spec."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        for finder in list(sys.meta_path):  # the other finders: path, editable installs, ...
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader, self)
                return spec
        return None


def install() -> None:
    """Register now if timm is loaded, else register when it is (idempotent)."""
    with _lock:
        if "timm" not in sys.modules:
            if not any(isinstance(f, _TimmFinder) for f in sys.meta_path):
                sys.meta_path.insert(0, _TimmFinder())
            return
    register_now()
