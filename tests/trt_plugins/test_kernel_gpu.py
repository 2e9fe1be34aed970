"""The CUDA kernel on a GPU against the reference (marker `gpu`; skipped without a GPU).

Outputs are poisoned with NaN before every run. Coefficients and basis are quantised
(trt_kernel_cases) so scores are exact and selections must match the reference exactly,
ties included; one test uses continuous scores and skips the rows whose top-B boundary
is a near-tie in fp32. fp16/bf16 errors must stay within twice what PyTorch's own
attention in that dtype (SDPA with the same mask) loses against fp32, plus one ulp.
"""
from __future__ import annotations

import pytest
import torch

from trt_kernel_cases import budget_for, make_case

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


@pytest.fixture(scope="module")
def ext():
    from sparsifiner.ops.cuda_binding import load_cuda_binding

    return load_cuda_binding()


ALGO = {"auto": 0, "tiled": 1, "rowwise": 2}


def run(ext, case, algo="auto"):
    out = torch.full_like(case.q, float("nan"))
    ext.forward_into(*case.args(), ALGO[algo], out)
    torch.cuda.synchronize()
    return out


def mask_of(case):
    from sparsifiner.ops.reference import connectivity_scores, full_mask, topk_mask

    return full_mask(topk_mask(connectivity_scores(case.coef, case.basis), case.budget), case.cls_rows)


def torch_lowp_error(case, ref) -> float:
    """What PyTorch's own attention in q's dtype loses against fp32 on this case."""
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        case.q, case.k, case.v, attn_mask=mask_of(case), scale=case.scale
    )
    return (sdpa.float() - ref).abs().max().item()


def assert_close(case, out, ref, rows=None):
    assert not out.isnan().any(), "NaN left in the output: rows never written"
    diff = (out.float() - ref).abs()
    if rows is not None:
        diff = diff[rows]
    err = diff.max().item()
    if out.dtype == torch.float32:
        tol = 2e-5 * max(1.0, ref.abs().max().item())
    else:
        tol = 2 * torch_lowp_error(case, ref) + torch.finfo(out.dtype).eps * ref.abs().max().item()
    assert err <= tol, f"max abs error {err:.3e} > {tol:.3e}"


@pytest.mark.parametrize("algo", ["tiled", "rowwise"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("budget", [1, 7, 49, None], ids=["b1", "b7", "b49", "bN"])
@pytest.mark.parametrize("d", [48, 64])
@pytest.mark.parametrize("n", [50, 197, 1025])
def test_matches_reference(ext, n, d, budget, dtype, algo):
    budget = n if budget is None else min(budget, n)
    case = make_case(6, n, d, budget, dtype=dtype, heads=3, seed=n + d + budget, constant_rows=2, device="cuda")
    assert_close(case, run(ext, case, algo), case.reference_fp32())


@pytest.mark.parametrize("n,budget", [(50, 7), (197, 49), (1025, 256)])
def test_float32(ext, n, budget):
    case = make_case(4, n, 64, budget, dtype=torch.float32, heads=2, seed=n, device="cuda")
    assert_close(case, run(ext, case), case.reference_fp32())


@pytest.mark.parametrize("d", [32, 80, 96, 128])
def test_every_head_dim(ext, d):
    case = make_case(2, 197, d, 49, dtype=torch.float16, seed=d, device="cuda")
    assert_close(case, run(ext, case, "tiled"), case.reference_fp32())


@pytest.mark.parametrize("algo", ["tiled", "rowwise"])
def test_ties_and_all_equal_rows(ext, algo):
    case = make_case(2, 197, 64, 49, dtype=torch.float16, seed=3, constant_rows=20, device="cuda")
    case.coef = (case.coef != 0).to(case.coef.dtype) / 8
    case.basis = ((case.basis != 0).float() / 8).to(case.coef.dtype)
    assert_close(case, run(ext, case, algo), case.reference_fp32())


@pytest.mark.parametrize("cls_rows", [0, 2, 65])
def test_cls_rows(ext, cls_rows):
    case = make_case(2, 197, 64, 49, dtype=torch.bfloat16, cls_rows=cls_rows, seed=cls_rows, device="cuda")
    assert_close(case, run(ext, case, "tiled"), case.reference_fp32())


def test_continuous_scores_away_from_near_ties(ext):
    """Random dense coefficients: compare the rows whose B-th and (B+1)-th scores are
    clearly apart (fp32 summation order may legitimately flip near-ties)."""
    case = make_case(4, 577, 64, 144, dtype=torch.float16, heads=2, seed=9, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    case.coef = torch.softmax(torch.randn(case.coef.shape, device="cuda", generator=g), -1).half()
    case.basis = (torch.randn(case.basis.shape, device="cuda", generator=g) * 0.02).half()
    scores = case.coef.double() @ case.basis.double()
    top = scores.sort(dim=-1, descending=True).values
    gap = top[..., case.budget - 1] - top[..., case.budget]
    clear = gap > 1e-5 * top.abs().amax(-1)
    rows = torch.cat([torch.ones_like(clear[..., :1]), clear], dim=-1)  # CLS rows are dense
    assert rows.float().mean() > 0.9
    assert_close(case, run(ext, case), case.reference_fp32(), rows=rows)


@pytest.mark.parametrize("algo", ["tiled", "rowwise"])
def test_batch_heads_beyond_grid_y_limit(ext, algo):
    case = make_case(65540, 9, 32, 3, dtype=torch.float16, heads=4, seed=1, device="cuda")
    assert_close(case, run(ext, case, algo), case.reference_fp32())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("budget", [49, budget_for(4097, 0.25)])
def test_largest_claimed_size(ext, dtype, budget):
    case = make_case(2, 4097, 128, budget, dtype=dtype, seed=budget, device="cuda")
    assert_close(case, run(ext, case), case.reference_fp32())


def test_tiled_and_rowwise_agree_and_are_deterministic(ext):
    case = make_case(3, 197, 64, 49, dtype=torch.float16, seed=2, device="cuda")
    tiled, again = run(ext, case, "tiled"), run(ext, case, "tiled")
    assert torch.equal(tiled, again)
    assert (tiled.float() - run(ext, case, "rowwise").float()).abs().max() < 2e-2


def test_custom_op_dispatches_to_the_kernel(ext):
    from sparsifiner.ops import topk_masked_attention

    case = make_case(2, 197, 64, 49, dtype=torch.float16, seed=4, device="cuda")
    with torch.no_grad():
        via_op = topk_masked_attention(*case.args())
    assert torch.equal(via_op, run(ext, case))


def test_non_contiguous_inputs(ext):
    case = make_case(2, 197, 64, 49, dtype=torch.float16, seed=5, device="cuda")
    ref = case.reference_fp32()
    qkv = torch.stack([case.q, case.k, case.v], dim=-2)  # [B, H, N, 3, d]: strided views
    out = ext.forward(qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :], case.coef, case.basis, case.budget,
                      case.scale, case.cls_rows, 0)
    assert_close(case, out, ref)
