"""nvcc compiles the kernels for sm_80 and sm_90, warning-free, with sane register use.

Runs without a GPU: each .cu is compiled to an object (-c) in parallel, with ptxas
reporting registers and spills per kernel instance. The table is printed (pytest -s,
or run this file as a script). Fails on any compiler warning, a missing instance, or a
kernel that spills more than a few bytes (a sign of runaway register use).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ARCHS = ("80", "90")
HEAD_DIMS = (32, 48, 64, 80, 96, 128)
MAX_SPILL_BYTES = 64  # ptxas trades a few spilled bytes for occupancy; more is a red flag
SOURCES = ("topkMaskedAttentionKernel.cu", "topkMaskedAttentionTiledHalf.cu", "topkMaskedAttentionTiledBf16.cu")


def compile_source(nvcc: Path, source: Path, out_dir: Path) -> str:
    command = [
        str(nvcc), "-std=c++17", "-O3", "-c", str(source), "-o", str(out_dir / (source.stem + ".o")),
        *[f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS],
        "-Xptxas", "-v", "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"nvcc failed on {source.name}:\n{result.stderr[-6000:]}")
    return result.stderr + result.stdout


def _demangle(names: list[str]) -> list[str]:
    if shutil.which("c++filt"):
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
        if len(out) == len(names):
            names = out
    return [re.sub(r"\(.*\)$", "", n).replace("sparsifiner::kernels::", "").replace("void ", "") for n in names]


def parse_ptxas(log: str) -> list[dict]:
    """One record per (kernel, arch): registers, spill stores/loads, stack bytes."""
    records, current = [], None
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", line):
            current = {"kernel": m.group(1), "arch": m.group(2)}
            records.append(current)
        elif current and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current and (m := re.search(r"Used (\d+) registers", line)):
            current["registers"] = int(m.group(1))
    return records


def compile_all(plugin_dir: Path, nvcc: Path, out_dir: Path) -> list[dict]:
    with ThreadPoolExecutor(max_workers=3) as pool:
        logs = list(pool.map(lambda s: compile_source(nvcc, plugin_dir / s, out_dir), SOURCES))
    records = [r for log in logs for r in parse_ptxas(log)]
    for r, name in zip(records, _demangle([r["kernel"] for r in records])):
        r["name"] = name
    return records


def format_table(records: list[dict]) -> str:
    lines = [f"{'kernel':52s} {'arch':>5s} {'regs':>5s} {'spill st/ld':>12s} {'stack':>6s}"]
    for r in sorted(records, key=lambda r: (r["name"], r["arch"])):
        spills = f"{r.get('spill_stores', '?')}/{r.get('spill_loads', '?')}"
        lines.append(f"{r['name']:52s} {'sm_' + r['arch']:>5s} {r.get('registers', '?'):>5} {spills:>12s} {r.get('stack', '?'):>6}")
    return "\n".join(lines)


def test_kernels_compile_for_sm80_and_sm90(plugin_dir, cuda_home, tmp_path):
    records = compile_all(plugin_dir, cuda_home / "bin" / "nvcc", tmp_path)
    table = format_table(records)
    print("\n" + table)
    names = {(r["name"], r["arch"]) for r in records}
    expected = [f"{k}<{t}, {d}>" for k in ("tiledTopKAttentionKernel", "tile2dTopKAttentionKernel")
                for t in ("__half", "__nv_bfloat16") for d in HEAD_DIMS]
    expected += [f"rowwiseTopKAttentionKernel<{t}>" for t in ("float", "__half", "__nv_bfloat16")]
    expected += ["compressBasisKernel", "gridStatsKernel", "gridPackKernel"]
    if shutil.which("c++filt"):
        missing = [(n, a) for n in expected for a in ARCHS if (n, a) not in names]
        assert not missing, f"kernel instances missing: {missing}\n{table}"
    assert len(records) == len(expected) * len(ARCHS), table
    for r in records:
        assert r.get("registers", 256) <= 255, table
        assert r.get("spill_stores", 1 << 30) <= MAX_SPILL_BYTES, f"{r['name']} sm_{r['arch']} spills\n{table}"


if __name__ == "__main__":  # print the table: python tests/trt_plugins/test_kernel_compile.py
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from sparsifiner.ops.cuda_binding import cuda_toolkit_home, plugin_source_dir

    home = cuda_toolkit_home()
    if home is None:
        pytest.exit("no CUDA toolkit found; set CUDA_HOME", returncode=2)
    with tempfile.TemporaryDirectory() as tmp:
        print(format_table(compile_all(plugin_source_dir(), home / "bin" / "nvcc", Path(tmp))))
