"""Building the native CPU libraries of TopKMaskedAttention on demand, cached by source hash.

Two shared libraries come from ``trt_plugins/topkMaskedAttention``: the torch binding
(``sparsifiner.ops.cpu_binding``) and the ONNX Runtime custom-op library
(``sparsifiner.runtime.ort_native``). Both are compiled here with the system C++
compiler into ``$SPARSIFINER_KERNEL_CACHE`` (else ``~/.cache/sparsifiner``), one folder
per source digest, compiler flags and CPU features, so an edit or another machine
rebuilds and a second call costs nothing. The compiler targets the build machine
(``-march=native``); ``SPARSIFINER_CPU_ARCH`` overrides it (e.g. ``x86-64-v2`` for a
build without AVX-512, which takes the kernel's portable loops).

Nothing here imports torch or onnxruntime. Failures raise ``SparsifinerError`` with a
one-line reason; the compiler's output is kept in a log file beside the target.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from sparsifiner.errors import SparsifinerError

CACHE_ENV = "SPARSIFINER_KERNEL_CACHE"
ARCH_ENV = "SPARSIFINER_CPU_ARCH"
CXX_ENV = "CXX"
PLUGIN_DIR_NAME = "topkMaskedAttention"
KERNEL_SOURCES = ("topkMaskedAttentionCpu.cpp",)
KERNEL_HEADERS = ("topkMaskedAttentionCpu.h", "topkMaskedAttentionSpec.h")


def plugin_source_dir() -> Path:
    """The folder holding the kernel sources (repository checkout or installed package)."""
    spec = importlib.util.find_spec("sparsifiner.trt_plugins")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if (Path(location) / PLUGIN_DIR_NAME).is_dir():
                return Path(location) / PLUGIN_DIR_NAME
    return Path(__file__).resolve().parents[2] / "trt_plugins" / PLUGIN_DIR_NAME


def find_compiler() -> str | None:
    """A C++17 compiler: $CXX, else g++, c++ or clang++ on PATH."""
    for name in (os.environ.get(CXX_ENV), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def require_compiler(what: str) -> str:
    compiler = find_compiler()
    if compiler is None:
        raise SparsifinerError(f"building {what} needs a C++17 compiler (g++ or clang++) on PATH, or set $CXX")
    return compiler


def cpu_arch() -> str:
    return os.environ.get(ARCH_ENV) or "native"


def _cpu_fingerprint() -> str:
    """CPU model and features, so a cache shared between machines never mixes -march=native builds."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.startswith(("flags", "model name"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparsifiner"
    return Path(root)


def build_tag(name: str, sources: Iterable[Path], flags: Sequence[str], extra: str = "") -> str:
    """A folder name that changes with the sources, the flags, the compiler and the CPU."""
    digest = hashlib.sha256()
    for path in sorted(set(sources)):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for part in (*flags, cpu_arch(), extra, _cpu_fingerprint(), find_compiler() or ""):
        digest.update(b"\0" + part.encode())
    return f"{name}-{digest.hexdigest()[:16]}"


def kernel_files(names: Sequence[str]) -> list[Path]:
    """The given source files plus the kernel's own sources and headers, checked to exist."""
    src = plugin_source_dir()
    paths = [src / n for n in (*names, *KERNEL_SOURCES, *KERNEL_HEADERS)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise SparsifinerError(f"the native kernel sources {missing} are missing from {src}: reinstall sparsifiner")
    return paths


def compile_library(target: Path, sources: Sequence[Path], flags: Sequence[str], what: str,
                    verbose: bool = False) -> Path:
    """Compile ``sources`` into the shared library ``target`` (atomic: a failed build leaves none)."""
    compiler = require_compiler(what)
    target.parent.mkdir(parents=True, exist_ok=True)
    log = target.with_suffix(".log")
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, "-shared", "-fPIC", "-O3", f"-march={cpu_arch()}", "-std=c++17",
           *[str(s) for s in sources if s.suffix == ".cpp"], "-o", tmp, *flags]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise SparsifinerError(f"building {what}: cannot run {compiler} ({exc.strerror})") from exc
    log.write_text(" ".join(cmd) + "\n\n" + proc.stdout + proc.stderr)
    if verbose:
        print(log.read_text())
    if proc.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        first = next((line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip()[:200])
        raise SparsifinerError(f"building {what} failed: {first.strip()} (full log: {log})")
    os.replace(tmp, target)
    return target
