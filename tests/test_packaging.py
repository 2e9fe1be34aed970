"""One package tree, whatever installs it: wheel, sdist, editable (strict and compat), type checker.

The repository's top-level ``export/``, ``calib/``, ``trt_plugins/`` and ``cli.py`` are
linked into ``sparsifiner/``; these tests check that every way of installing or
analysing the project sees them as ``sparsifiner.export`` etc. and nothing else.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINKED = ("export", "calib", "trt_plugins")
IMPORT_CHECK = ("import sparsifiner, sparsifiner.export, sparsifiner.calib, sparsifiner.trt_plugins, sparsifiner.cli; "
                "from sparsifiner.export import settings; print(settings.__file__)")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout (an unpacked sdist): the file lists come from git")
    return out.stdout.split()


def build_wheel(source: Path, dest: Path) -> list[str]:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dest)], check=True, capture_output=True)
    (wheel,) = dest.glob("sparsifiner-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def check_wheel_names(names: list[str]) -> None:
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"sparsifiner"}
    for name in ("sparsifiner/cli.py", "sparsifiner/export/__init__.py", "sparsifiner/export/exporter.py",
                 "sparsifiner/calib/__init__.py", "sparsifiner/trt_plugins/__init__.py",
                 "sparsifiner/trt_plugins/CMakeLists.txt", "sparsifiner/train/recipes/demo.yaml",
                 "sparsifiner/train/recipes/deit_small.yaml"):
        assert name in names, name
    assert any(n.startswith("sparsifiner/trt_plugins/topkMaskedAttention/") and n.endswith(".cu") for n in names)
    assert not any("/command/" in n for n in names)


@pytest.mark.slow
def test_wheel_has_only_the_sparsifiner_namespace(tmp_path):
    names = build_wheel(ROOT, tmp_path)
    check_wheel_names(names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sparsifiner = sparsifiner.cli:main" in zipfile.ZipFile(tmp_path / next(tmp_path.glob("*.whl")).name).read(entry).decode()


@pytest.mark.slow
def test_sdist_is_complete_enough_to_build_and_run_the_tests(tmp_path):
    files = tracked_files()
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    (sdist,) = tmp_path.glob("sparsifiner-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "src", filter="data")
    (tree,) = (tmp_path / "src").iterdir()
    wanted = [f for f in files if f.startswith(("tests/", "recipes/", "bench/", "export/", "calib/", "trt_plugins/"))
              or f in ("cli.py", "setup.cfg", "pyproject.toml", "README.md")]
    missing = [f for f in wanted if not (tree / f).is_file()]
    assert not missing, f"the sdist lacks {missing[:5]}"
    # The sdist builds the same wheel, and its test suite collects from the unpacked tree.
    check_wheel_names(build_wheel(tree, tmp_path / "wheel"))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=tree, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"{tree}/sparsifiner" in subprocess.run([sys.executable, "-c", "import sparsifiner; print(sparsifiner.__file__)"],
                                                   cwd=tree, env=env, capture_output=True, text=True).stdout


def _copy_checkout(dest: Path) -> Path:
    for name in tracked_files():
        src, dst = ROOT / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["strict", "compat"])
def test_editable_install(tmp_path, mode):
    checkout = _copy_checkout(tmp_path / "checkout")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    # The new environment borrows this one's packages (torch, setuptools, ...), not its sparsifiner.
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-build-isolation", "-e", str(checkout), "--config-settings", f"editable_mode={mode}"],
                   check=True, capture_output=True)
    done = subprocess.run([str(python), "-c", IMPORT_CHECK], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("export/settings.py")
    assert str(checkout) in str(Path(done.stdout.strip()).resolve())
    script = subprocess.run([str(env_dir / "bin" / "sparsifiner"), "--version"], capture_output=True, text=True)
    assert script.returncode == 0 and "sparsifiner" in script.stdout


def test_checkout_imports_top_level_folders_only_under_sparsifiner():
    for name in (*LINKED, "cli"):
        done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode != 0 and "import sparsifiner." in done.stderr, name
    for name in LINKED:
        assert (ROOT / "sparsifiner" / name).resolve() == (ROOT / name).resolve()
    assert (ROOT / "sparsifiner" / "cli.py").resolve() == (ROOT / "cli.py").resolve()


@pytest.mark.slow
def test_type_checker_resolves_every_import_and_name(tmp_path):
    pytest.importorskip("mypy")
    done = subprocess.run([sys.executable, "-m", "mypy", "-p", "sparsifiner", "--follow-imports=silent",
                           "--cache-dir", str(tmp_path / "cache"), "--no-error-summary"],
                          cwd=ROOT, capture_output=True, text=True)
    lines = (done.stdout + done.stderr).splitlines()
    # Unresolved imports, and names or attributes that do not exist (a rename that missed a caller).
    unresolved = [line for line in lines if "[import-not-found]" in line or "found twice" in line
                  or "Cannot find implementation" in line or "[name-defined]" in line or "[attr-defined]" in line]
    assert not unresolved, "\n".join(unresolved[:10])
    assert any("sparsifiner" in line for line in lines) or done.returncode == 0
