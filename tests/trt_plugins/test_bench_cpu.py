"""bench/cpu.py end to end on a tiny configuration: the op-level graphs run and agree,
the JSON has medians and CPU-time ratios, and the table and plot read it."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsifiner.ops import native_build

BENCH = Path(__file__).resolve().parents[2] / "bench" / "cpu.py"


@pytest.fixture(scope="module")
def bench():
    if native_build.find_compiler() is None:
        pytest.skip("no C++ compiler to build the native op the benchmark times")
    spec = importlib.util.spec_from_file_location("bench_cpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sparse_graph_native_matches_its_local_function(bench):
    model, _ = bench.sparse_graph(65, 16, with_function=True)
    native = bench.ort_session(model, 1, native=True)
    function = bench.ort_session(model, 1, native=False)
    g = np.random.default_rng(0)
    feeds = {x: g.standard_normal((2, bench.HEADS, 65, bench.HEAD_DIM)).astype(np.float32) for x in "qkv"}
    np.testing.assert_allclose(native.run(None, feeds)[0], function.run(None, feeds)[0], atol=1e-5)


def test_op_run_table_and_plot(bench, tmp_path):
    out = tmp_path / "op.json"
    cmd = [sys.executable, str(BENCH), "op", "--ns", "65", "--batches", "1", "--budgets", "49,keep", "--threads", "1",
           "--repeats", "3", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    data = json.loads(out.read_text())
    assert [r["budget"] for r in data["results"]] == [49, 16]
    res = data["results"][0]
    assert set(res["candidates"]) == {"ort_dense", "torch_sdpa", "ort_native", "torch_native", "ort_function"}
    assert res["candidates"]["ort_native"]["n"] == 3 and res["cpu_ratios_vs_ort_dense"]["ort_native"] > 0
    table = subprocess.run([sys.executable, str(BENCH), "table", str(out)], check=True, capture_output=True,
                           text=True).stdout
    assert table.startswith("| target |")
    png = tmp_path / "op.png"
    subprocess.run([sys.executable, str(BENCH), "plot", str(out), "--png", str(png)], check=True, capture_output=True)
    assert png.stat().st_size > 1000
