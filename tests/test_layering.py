"""Dependencies point one way: the library never imports the stages above it.

``sparsifiner/`` (the library) must not import ``sparsifiner.export``, ``sparsifiner.calib``
or the CLI; ``export/`` and ``calib/`` use the library but never each other; only
``cli.py`` wires the stages together. Checked on the parsed import statements, lazy
imports inside functions included.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINKED = {"export", "calib", "trt_plugins", "cli.py"}  # links inside sparsifiner/ to top-level folders


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def library_files():
    for path in sorted((ROOT / "sparsifiner").rglob("*.py")):
        if path.relative_to(ROOT / "sparsifiner").parts[0] not in LINKED:
            yield path


def offending(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(name for name in imported_modules(path)
                  if any(name == f or name.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("folder,forbidden", [
    ("sparsifiner", ("sparsifiner.export", "sparsifiner.calib", "sparsifiner.cli", "export", "calib", "cli")),
    ("export", ("sparsifiner.calib", "sparsifiner.cli", "calib", "cli")),
    ("calib", ("sparsifiner.export", "sparsifiner.cli", "export", "cli")),
])
def test_no_upward_or_sideways_imports(folder, forbidden):
    files = list(library_files()) if folder == "sparsifiner" else sorted((ROOT / folder).rglob("*.py"))
    assert files
    bad = {str(p.relative_to(ROOT)): offending(p, forbidden) for p in files}
    assert not {k: v for k, v in bad.items() if v}


def test_checker_sees_lazy_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from sparsifiner.export import exporter\n")
    assert offending(probe, ("sparsifiner.export",)) == ["sparsifiner.export", "sparsifiner.export.exporter"]


def test_tests_and_benchmarks_import_names_that_exist():
    """Every ``from sparsifiner... import name`` in tests/ and bench/, lazy ones included,
    resolves (GPU-only tests are skipped here, so a rename would otherwise go unnoticed)."""
    import importlib.util

    missing = []
    for path in sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module.split(".")[0] == "sparsifiner"):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            try:
                module = importlib.import_module(node.module)
            except ImportError as exc:
                missing.append(f"{where}: {exc}")
                continue
            for alias in node.names:
                if not hasattr(module, alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                    missing.append(f"{where}: {node.module} has no {alias.name}")
    assert not missing, "\n".join(missing)
