"""The 2-D tile kernel (v2, kTILED2D) on the CPU emulator against the reference.

Two checks per case: the output against the fp32 reference within the dtype's error budget
(as for v1), and the selection itself, bit for bit: with q = 0 every kept key gets the same
weight 1/B, so out_i = (1/B) sum of v_j over row i's kept keys; with v_j in {-1, +1}^d any
other key set moves some coordinate by at least 2/B, while the kernel's rounding (exact
integer sums on the tensor cores, then one division and one fp16 rounding) stays below
2^-11. So |out - out_ref| < 1/B for every row means the masks are identical.

Inputs on the exact-selection value grid take the tensor-core path; rows off the grid
(continuous or non-finite coefficients, a basis off the grid) take v1's exact path inside
the same kernel, and must match just as well.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from emulated_kernel import A100_SMEM, H100_SMEM
from trt_kernel_cases import Case, error_budget, make_case

BENCH = Path(__file__).resolve().parents[2] / "bench" / "attention.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_attention_t2d", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_output(emulator, case, algo="tiled2d", expect="tiled2d", block_stride=1, max_smem=H100_SMEM):
    out, used = emulator.run(case, algo, block_stride=block_stride, max_smem=max_smem)
    assert used == expect
    ref = case.reference_fp32()
    computed = ~out.isnan().any(dim=-1)
    assert computed.all() if block_stride == 1 else computed.any()
    err = (out.float() - ref)[computed].abs().max().item()
    tol = error_budget(case, out.dtype, ref)
    assert err <= tol, f"max abs error {err:.3e} > {tol:.3e}"
    return emulator.last_counts


def check_masks(emulator, case, algo="tiled2d", expect="tiled2d", block_stride=1, seed=0):
    """Selections bit-identical to the reference's (q = 0, v in {-1, +1})."""
    g = torch.Generator().manual_seed(seed)
    q = torch.zeros_like(case.q)
    v = (torch.randint(0, 2, case.v.shape, generator=g) * 2 - 1).to(case.v.dtype)
    probe = Case(q, case.k, v, case.coef, case.basis, case.budget, case.scale, case.cls_rows)
    out, used = emulator.run(probe, algo, block_stride=block_stride)
    assert used == expect
    ref = probe.reference_fp32()
    computed = ~out.isnan().any(dim=-1)
    assert computed.all() if block_stride == 1 else computed.any()
    rows = torch.arange(case.q.shape[2])
    sparse = (rows >= case.cls_rows)[None, None, :] & computed
    err = (out.float() - ref).abs().amax(dim=-1)[sparse]
    bad = int((err >= 1.0 / case.budget).sum())
    assert bad == 0, f"{bad} rows select other keys than the reference (max error {err.max():.3e})"
    return emulator.last_counts


def modes(counts):
    return {k: int(sum(counts[ph][k] for ph in counts)) for k in ("rows", "rows_list", "rows_zero", "rows_v1")}


def bench_case(bench, n, budget, mode, heads=2, d=64, dtype=torch.float16, seed=0):
    q, k, v, coef, basis = bench.make_inputs(torch, 1, heads, n, d, 32, dtype, mode, "threshold", seed, dev="cpu")
    return Case(q, k, v, coef, basis, budget, d**-0.5, 1)


# ------------------------------------------------------------------ grid inputs: tensor-core path


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,d,budget", [(65, 64, 16), (50, 48, 7), (197, 64, 49), (170, 32, 1), (170, 32, 168)])
def test_matches_reference(emulator, bench, dtype, n, d, budget):
    """Calibrated coherent inputs (non-negative: accumulators start at -tau); 7x7 and 13x13
    grids have partial edge tiles; budgets 1 and N - 2."""
    case = bench_case(bench, n, budget, "coherent", d=d, dtype=dtype, seed=n + budget)
    counts = check_output(emulator, case)
    assert modes(counts)["rows_v1"] == 0  # everything on the tensor-core path
    check_masks(emulator, case)


@pytest.mark.parametrize("mode", ["coherent", "random"])
@pytest.mark.parametrize("budget", [1, 7, 49, 144, 400])
def test_masks_are_the_references(emulator, bench, mode, budget):
    """N = 577 (24 x 24 patches): sample, filter, lists and zero fill, signed and not."""
    check_masks(emulator, bench_case(bench, 577, budget, mode, seed=budget))


@pytest.mark.parametrize("d", [32, 80, 96, 128])
def test_every_head_dim(emulator, bench, d):
    check_output(emulator, bench_case(bench, 82, 20, "coherent", heads=1, d=d, dtype=torch.bfloat16, seed=d))


@pytest.mark.parametrize("cls_rows", [0, 2, 65])
def test_cls_rows(emulator, cls_rows):
    """CLS rows get v1's dense tiles; 64 patches after them."""
    case = make_case(2, 64 + cls_rows, 64, 9, dtype=torch.float16, cls_rows=cls_rows, seed=cls_rows)
    case.basis = case.basis.abs()  # non-negative: the tensor-core path for (almost) every row
    check_output(emulator, case)
    check_masks(emulator, case)


@pytest.mark.parametrize("rank,coef_dtype", [(1, torch.float32), (5, torch.bfloat16), (64, None)])
def test_rank_and_coefficient_dtypes(emulator, rank, coef_dtype):
    case = make_case(2, 50, 48, 11, dtype=torch.bfloat16, rank=rank, coef_dtype=coef_dtype, coef_mode="threshold")
    case.basis = case.basis.half()
    check_output(emulator, case)
    check_masks(emulator, case)


def test_ties_and_zero_fill(emulator):
    """0/1 basis and equal coefficients: scores take few values, ties everywhere; rows
    with fewer than B positive scores take their positives and then zeros by index;
    -0.0 basis entries equal +0.0."""
    case = make_case(2, 145, 64, 40, dtype=torch.float16, seed=3, constant_rows=5)
    case.coef = (case.coef != 0).to(case.coef.dtype) / 8
    basis = (case.basis != 0).float() / 8
    basis[basis == 0] = -0.0
    case.basis = basis.to(case.coef.dtype)
    counts = check_output(emulator, case)
    m = modes(counts)
    assert m["rows_zero"] > 0 and m["rows_v1"] == 0, m
    check_masks(emulator, case)


def test_signed_basis_needing_zeros_takes_the_v1_path(emulator):
    """Signed scores whose B-th is <= 0: v1's exact path inside the v2 kernel."""
    case = make_case(2, 65, 64, 40, dtype=torch.float16, seed=8)
    counts = check_output(emulator, case)
    assert modes(counts)["rows_v1"] > 0
    check_masks(emulator, case)


# ------------------------------------------------------------------ off the grid: v1's path


def test_continuous_coefficients_take_the_v1_path(emulator):
    case = make_case(2, 65, 64, 13, dtype=torch.float16, seed=2, continuous=True, coef_mode="dense")
    case.coef = case.coef.float()  # not multiples of 2^-10
    counts = check_output(emulator, case)
    m = modes(counts)
    assert m["rows_v1"] == m["rows"] - 2  # every non-CLS row (CLS rows: dense tiles)


@pytest.mark.parametrize("special", [float("nan"), float("inf"), 3e38])
def test_non_finite_and_huge_values(emulator, special):
    """A basis off the grid sends every row to v1's radix path (NaN ranks first, as the
    reference's sort does); a NaN or huge coefficient sends its row there. Coefficients are
    dense and the touched basis row has no zeros: v1 skips zero products, so 0 * NaN (NaN
    in the reference) only agrees when there is none (v1's own test does the same)."""
    case = make_case(1, 65, 32, 7, dtype=torch.float16, coef_dtype=torch.float32, seed=4, coef_mode="dense")
    case.basis = case.basis.float().abs()
    case.basis[3, [5, 20, 41]] = special
    counts = check_output(emulator, case)
    assert modes(counts)["rows_list"] == 0
    case = make_case(1, 65, 32, 7, dtype=torch.float16, coef_dtype=torch.float32, seed=5)
    case.basis = case.basis.abs()
    case.basis[2] = case.basis[2] + 0.125
    case.coef[0, 0, [3, 17], 2] = special
    counts = check_output(emulator, case)
    assert modes(counts)["rows_v1"] >= 2


# ------------------------------------------------------------------ planning


def test_auto_picks_tile2d_where_it_applies(emulator, bench):
    square = bench_case(bench, 65, 16, "coherent", heads=1)
    assert emulator.run(square, "auto")[1] == "tiled2d"
    assert emulator.run(make_case(1, 70, 64, 9, dtype=torch.float16), "auto")[1] == "tiled"  # 69: no square
    assert emulator.run(make_case(1, 65, 64, 65, dtype=torch.float16), "auto")[1] == "tiled"  # budget = N
    assert emulator.run(make_case(1, 65, 64, 9, dtype=torch.float16, rank=70), "auto")[1] == "tiled"  # R > 64
    assert emulator.run(make_case(1, 65, 64, 9, dtype=torch.float32), "auto")[1] == "rowwise"
    with pytest.raises(RuntimeError, match="square patch grid"):
        emulator.run(make_case(1, 70, 64, 9, dtype=torch.float16), "tiled2d")
    with pytest.raises(RuntimeError, match="float16 and bfloat16"):
        emulator.run(make_case(1, 65, 64, 9, dtype=torch.float32), "tiled2d")
    # Lists of more than B entries per row do not fit for B = 500 of 577: v1 takes it.
    near_dense = bench_case(bench, 577, 500, "coherent", heads=1)
    with pytest.raises(RuntimeError, match="shared memory"):
        emulator.run(near_dense, "tiled2d")
    assert emulator.run(near_dense, "auto", block_stride=50)[1] == "tiled"


def test_large_n(emulator, bench):
    """N = 4097 (64 x 64 patches), B = 49: a sample of tiles matches on H100's shared memory;
    on A100's (163 KB) the 2-D kernel does not fit and auto takes v1's tiled kernel."""
    case = bench_case(bench, 4097, 49, "coherent", heads=1)
    counts = check_masks(emulator, case, block_stride=11)
    m = modes(counts)
    assert m["rows_v1"] <= 0.03 * m["rows"], m  # a missed threshold costs speed, not exactness
    assert emulator.run(case, "auto", max_smem=A100_SMEM, block_stride=64)[1] == "tiled"


def test_n1025_keep_quarter_sampled(emulator, bench):
    check_masks(emulator, bench_case(bench, 1025, 256, "coherent", heads=1), block_stride=5)
    check_masks(emulator, bench_case(bench, 1025, 256, "random", heads=1), block_stride=5)
