"""The CUDA kernels, compiled unchanged for the CPU emulator, against the reference.

The emulator (tests/trt_plugins/emulator) runs every CUDA thread as a coroutine with real
barriers and models shuffles, ballots, ldmatrix, mma.m16n8k16 and cp.async; outputs start
as NaN. This checks indexing, selection, tie-breaking, masking, the softmax and the
fragment bookkeeping of both kernels without a GPU. It cannot see timing, races the
barriers do not order, or hardware rounding inside the tensor cores: the GPU tests
(test_kernel_gpu.py) remain owed on a real device.
"""
from __future__ import annotations

import random

import pytest
import torch

from emulated_kernel import H100_SMEM
from trt_kernel_cases import budget_for, error_budget, make_case


def check(emulator, case, algo="auto", expect_algo=None, block_stride=1, max_smem=H100_SMEM):
    out, used = emulator.run(case, algo, max_smem=max_smem, block_stride=block_stride)
    if expect_algo is not None:
        assert used == expect_algo
    ref = case.reference_fp32()
    computed = ~out.isnan().any(dim=-1)
    if block_stride == 1:
        assert computed.all(), f"{int((~computed).sum())} rows never written"
    else:
        assert computed.any()
    err = (out.float() - ref)[computed].abs().max().item()
    tol = error_budget(case, out.dtype, ref)
    assert err <= tol, f"max abs error {err:.3e} > {tol:.3e} ({used})"
    return out


@pytest.mark.parametrize("budget", [1, 7, 49, None], ids=["b1", "b7", "b49", "bN"])
@pytest.mark.parametrize("d", [48, 64])
@pytest.mark.parametrize("n", [50, 197])
def test_tiled_fp16_awkward_sizes(emulator, n, d, budget):
    budget = n if budget is None else min(budget, n)
    check(emulator, make_case(2, n, d, budget, dtype=torch.float16, seed=n * d + budget), "tiled", "tiled")


@pytest.mark.parametrize(
    "dtype,algo",
    [(torch.bfloat16, "tiled"), (torch.float16, "rowwise"), (torch.bfloat16, "rowwise"), (torch.float32, "auto")],
)
@pytest.mark.parametrize("n,d,budget", [(50, 48, 7), (197, 64, 49), (66, 64, 66)])
def test_types_and_algorithms(emulator, dtype, algo, n, d, budget):
    expect = "rowwise" if dtype == torch.float32 else algo
    check(emulator, make_case(1, n, d, budget, dtype=dtype, seed=n + budget), algo, expect)


@pytest.mark.parametrize("d", [32, 80, 96, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_head_dim(emulator, dtype, d):
    check(emulator, make_case(1, 70, d, 9, dtype=dtype, seed=d), "tiled", "tiled")


@pytest.mark.parametrize("budget", [1, 13, 49, 150])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_continuous_scores_fast_selection(emulator, dtype, budget):
    """Tie-free scores take the histogram path (whole boundary bin or exact ranking)."""
    case = make_case(2, 197, 64, budget, dtype=dtype, seed=budget, continuous=True, coef_mode="dense")
    check(emulator, case, "auto")


@pytest.mark.parametrize("algo", ["tiled", "rowwise"])
def test_exact_ties_go_to_the_lower_key_index(emulator, algo):
    """Scores from a 0/1 basis and equal coefficients take few values: ties everywhere,
    plus rows whose scores are all equal, plus -0.0 basis entries that must equal +0.0."""
    case = make_case(2, 130, 64, 17, dtype=torch.float16, seed=3, constant_rows=5)
    case.coef = (case.coef != 0).to(case.coef.dtype) / 8
    basis = (case.basis != 0).float() / 8
    basis[basis == 0] = -0.0
    case.basis = basis.to(case.coef.dtype)
    check(emulator, case, algo, algo)


@pytest.mark.parametrize("special", [float("nan"), float("inf"), -float("inf"), 3e38])
def test_non_finite_and_huge_scores(emulator, special):
    """NaN ranks first (like torch.sort), infinities and near-overflow ranges take the
    general radix path."""
    case = make_case(1, 50, 32, 7, dtype=torch.float32, seed=4, coef_mode="dense", basis_zero=0.5, continuous=True)
    case.basis[:, [5, 20, 41]] = 0
    case.basis[3, [5, 20, 41]] = special
    case.basis[4, 7] = -special if special == 3e38 else 0
    check(emulator, case, "rowwise", "rowwise")


@pytest.mark.parametrize("cls_rows", [0, 2, 65])
def test_cls_rows_attend_densely(emulator, cls_rows):
    check(emulator, make_case(2, 130, 64, 9, dtype=torch.float16, cls_rows=cls_rows, seed=cls_rows), "tiled", "tiled")


@pytest.mark.parametrize("rank", [1, 5, 70])
def test_rank_and_coefficient_dtypes(emulator, rank):
    case = make_case(2, 66, 48, 11, dtype=torch.bfloat16, rank=rank, coef_dtype=torch.float32, coef_mode="threshold")
    case.basis = case.basis.half()
    check(emulator, case, "tiled", "tiled")


def test_tiny_sequences(emulator):
    for n, budget, cls_rows in [(1, 1, 0), (2, 1, 1), (2, 2, 0), (33, 32, 1)]:
        check(emulator, make_case(1, n, 32, budget, dtype=torch.float16, cls_rows=cls_rows, seed=n), "tiled", "tiled")


def test_shared_memory_fallback_to_rowwise(emulator):
    """When the tiled kernel's shared memory does not fit, auto picks the row-wise one."""
    case = make_case(1, 1025, 64, budget_for(1025, 0.25), dtype=torch.float16, seed=5)
    check(emulator, case, "auto", "rowwise", block_stride=41, max_smem=48 * 1024)
    with pytest.raises(RuntimeError, match="too large for the tiled kernel"):
        emulator.run(case, "tiled", max_smem=48 * 1024)


def test_invalid_params_are_rejected(emulator):
    case = make_case(1, 50, 64, 7, dtype=torch.float16)
    case.budget = 0
    with pytest.raises(RuntimeError, match="budget must be in"):
        emulator.run(case)
    with pytest.raises(RuntimeError, match="head dim"):
        emulator.run(make_case(1, 50, 40, 7, dtype=torch.float16))


def test_large_n_sampled_tiles(emulator):
    """N = 1025 at keep rate 0.25 on a sample of tiles (the CLS tile, inner ones, the last)."""
    case = make_case(1, 1025, 64, budget_for(1025, 0.25), dtype=torch.float16, seed=6)
    check(emulator, case, "tiled", "tiled", block_stride=6)


@pytest.mark.slow
def test_largest_claimed_size_sampled(emulator):
    """N = 4097 with head dim 128 (the largest claimed), budget 49, a sample of tiles."""
    case = make_case(1, 4097, 128, 49, dtype=torch.bfloat16, seed=7)
    check(emulator, case, "tiled", "tiled", block_stride=21)


@pytest.mark.slow
def test_randomised_sweep(emulator):
    rng = random.Random(11)
    for i in range(60):
        n = rng.choice([1, 2, 31, 32, 33, 64, 65, 66, 129, 197])
        cls_rows = rng.choice([c for c in (0, 1, 2, 65) if c < n])
        budget = rng.choice([b for b in (1, 7, max(1, n // 4), n - 1, n) if 1 <= b <= n])
        dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16])
        algo = "auto" if dtype == torch.float32 else rng.choice(["tiled", "rowwise"])
        case = make_case(
            rng.choice([1, 3]), n, rng.choice([32, 48, 64, 80, 96, 128]), budget, dtype=dtype,
            rank=rng.choice([1, 5, 32, 40, 70]), cls_rows=cls_rows, seed=i,
            coef_mode=rng.choice(["top8", "threshold", "dense"]), constant_rows=min(2, n - cls_rows),
            coef_dtype=rng.choice([None, torch.float32, torch.bfloat16]), basis_zero=rng.choice([0.0, 0.5, 0.9, 0.99]),
        )
        check(emulator, case, algo)
