"""bench/attention.py on a CPU machine: a clear exit without a GPU, and its pure parts."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "attention.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_attention", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_without_gpu_exits_2_with_one_line():
    result = subprocess.run([sys.executable, str(BENCH), "--no-plot"], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "GPU" in lines[0], result.stderr


@pytest.mark.parametrize("mode", ["coherent", "random"])
@pytest.mark.parametrize("coef_mode", ["top8", "threshold"])
def test_inputs_are_pruned_like_the_paper(bench, mode, coef_mode):
    q, k, v, coef, basis = bench.make_inputs(torch, 2, 3, 197, 64, 32, torch.float16, mode, coef_mode, 0, dev="cpu")
    assert q.shape == k.shape == v.shape == (2, 3, 197, 64) and coef.shape == (2, 3, 196, 32)
    assert 0.3 < (basis != 0).float().mean().item() < 0.5  # trained demo blocks: 0.42-0.60
    nonzero = (coef != 0).sum(-1)
    if coef_mode == "top8":
        assert (nonzero <= 8).all() and nonzero.float().mean() > 7  # a few tiny ones round to 0 on the grid
    else:
        assert nonzero.float().mean() < 8  # trained: 4-6 coefficients above 0.05 per row


@pytest.mark.parametrize("mode", ["coherent", "random"])
def test_inputs_lie_on_the_value_grid(bench, mode):
    """coef: multiples of 2^-10 in [0, 1]; basis: m * 2^e per column with |m| <= 127."""
    _, _, _, coef, basis = bench.make_inputs(torch, 1, 2, 197, 64, 32, torch.float16, mode, "threshold", 1, dev="cpu")
    c = coef.float() * 1024
    assert torch.equal(c, c.round()) and coef.min() >= 0 and coef.max() <= 1
    again_coef, again_basis = bench.quantise_to_grid(torch, coef, basis)
    assert torch.equal(again_coef, coef.float()) and torch.equal(again_basis, basis.float())
    colmax = basis.float().abs().amax(0)
    e = torch.ceil(torch.log2(torch.where(colmax > 0, colmax, torch.ones_like(colmax)) / 127)).clamp(min=-24)
    m = basis.float() / torch.exp2(e)
    assert torch.equal(m, m.round()) and m.abs().max() <= 127


def test_coherent_inputs_look_like_trained_masks(bench):
    """The calibration of bench/NOTES.md ("Masks"): zero share, B-th score 0, coefficient
    support, neighbour overlap within the ranges measured on the trained demo model."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mask_stats", BENCH.parent / "mask_stats.py")
    stats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stats)
    _, _, _, coef, basis = bench.make_inputs(torch, 1, 2, 577, 8, 32, torch.float32, "coherent", "threshold", 0, dev="cpu")
    rec = stats.mask_stats(coef, basis, 144)
    assert 0.1 < rec["zero_share"] < 0.45
    assert 0.02 < rec["bth_score_zero_rows"] < 0.3
    assert 3.5 < rec["coef_nnz_per_row"]["mean"] < 6.5
    assert 0.5 < rec["neighbour_iou"] < 0.85
    assert rec["union_fraction"]["2d8x8"] < rec["union_fraction"]["raster64"]


def test_coherent_masks_have_smaller_unions_than_random(bench):
    fractions = {}
    for mode in ("coherent", "random"):
        _, _, _, coef, basis = bench.make_inputs(torch, 1, 2, 1025, 64, 32, torch.float16, mode, "top8", 0, dev="cpu")
        fractions[mode] = bench.union_fraction(torch, coef, basis, 49)
        fractions[mode + "_2d"] = bench.union_fraction(torch, coef, basis, 49, tiling="2d")
    assert 0 < fractions["coherent"] < fractions["random"] <= 1
    assert fractions["coherent_2d"] < fractions["coherent"]


def test_summary_and_plot(bench, tmp_path):
    records = []
    for n in (197, 1025):
        rec = dict(dtype="fp16", n=n, batch=1, batch_kind="1", heads=6, head_dim=64, inputs="coherent",
                   budget=49, budget_mode="fixed", algo="tiled", union_fraction=0.5, memory_floor_ms=0.01,
                   methods={"topk_kernel": {"ms": 0.02}, "sdpa_flash": {"ms": 0.04},
                            "sdpa_cudnn": {"skipped": "no"}, "naive_masked": {"ms": 0.5}})
        bench.summarize(rec)
        records.append(rec)
    assert records[0]["kernel_over_memory_floor"] == pytest.approx(2.0)
    assert records[0]["speedup_vs"] == {"sdpa_flash": pytest.approx(2.0), "naive_masked": pytest.approx(25.0)}
    assert records[0]["speedup_vs_best_dense_sdpa"] == pytest.approx(2.0)
    assert "sdpa_cudnn=skip" in bench.format_record(records[0])
    bench.plot({"device": "Test GPU", "records": records}, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000
