"""One import name per module: the top-level folders are importable only under ``sparsifiner``.

``export/``, ``calib/``, ``trt_plugins/`` and ``cli.py`` sit at the repository's top
level (the design card) and install as ``sparsifiner.export`` etc. through links inside
``sparsifiner/``. From a checkout, Python could also import them as ``export`` or
``cli``, giving a second copy of every class; the packages refuse that.
"""


def require_namespace(module_name: str, expected: str) -> None:
    """Raise ImportError unless the module is imported as ``expected`` (or run as a script)."""
    if module_name not in (expected, "__main__"):
        raise ImportError(f"import {expected}, not {module_name}: the repository's top-level folders are part of "
                          "the sparsifiner package")
