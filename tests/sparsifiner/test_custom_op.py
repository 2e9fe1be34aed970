"""The torch.library op: opcheck, the fake implementation's layout, the autograd formula, compile."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from sparsifiner.ops import topk_masked_attention, topk_masked_attention_reference

OP = torch.ops.sparsifiner.topk_masked_attention.default
OPCHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def qkv_views(b, h, n, d, dtype=torch.float32, requires_grad=False):
    """q, k, v as timm makes them: strided views of one [B, N, 3, H, d] tensor."""
    qkv = torch.randn(b, n, 3, h, d, dtype=dtype, requires_grad=requires_grad)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def predictor_inputs(b, h, n, r=6, cls_rows=1):
    coef = torch.rand(b, h, n - cls_rows, r)
    return torch.where(coef > 0.4, coef, torch.zeros_like(coef)), torch.rand(r, n)


def layouts(b, h, n, d, dtype=torch.float32, requires_grad=False):
    """The input layouts the op meets: contiguous, timm's qkv views, [B, N, H, d] transposed."""
    contiguous = [torch.randn(b, h, n, d, dtype=dtype, requires_grad=requires_grad) for _ in range(3)]
    transposed = [torch.randn(b, n, h, d, dtype=dtype).transpose(1, 2).requires_grad_(requires_grad)
                  for _ in range(3)]
    return {"contiguous": contiguous, "qkv_views": list(qkv_views(b, h, n, d, dtype, requires_grad)),
            "transposed": transposed}


@pytest.mark.parametrize("layout,requires_grad", [("contiguous", False), ("qkv_views", True), ("transposed", True)])
def test_opcheck_passes_every_check(layout, requires_grad):
    q, k, v = layouts(2, 3, 17, 8, requires_grad=requires_grad)[layout]
    coef, basis = predictor_inputs(2, 3, 17)
    results = torch.library.opcheck(OP, (q, k, v, coef, basis, 5, 0.35, 1), test_utils=OPCHECKS,
                                    raise_exception=False)
    assert results == {name: "SUCCESS" for name in OPCHECKS}


def test_opcheck_bf16_and_edge_attributes():
    q, k, v = qkv_views(1, 2, 9, 4, dtype=torch.bfloat16, requires_grad=True)
    coef, basis = predictor_inputs(1, 2, 9, cls_rows=0)
    for budget in (1, 9):  # one key per row, and every key (dense)
        results = torch.library.opcheck(OP, (q, k, v, coef, basis, budget, 0.5, 0), test_utils=OPCHECKS,
                                        raise_exception=False)
        assert results == {name: "SUCCESS" for name in OPCHECKS}


@pytest.mark.parametrize("layout", ["contiguous", "qkv_views", "transposed"])
def test_real_and_fake_outputs_are_contiguous_in_q_dtype(layout):
    q, k, v = layouts(2, 3, 17, 8, dtype=torch.bfloat16)[layout]
    coef, basis = predictor_inputs(2, 3, 17)
    real = OP(q, k, v, coef, basis, 5, 0.35, 1)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = OP(*(mode.from_tensor(t) for t in (q, k, v, coef, basis)), 5, 0.35, 1)
    for out in (real, fake):
        assert out.is_contiguous() and out.dtype == q.dtype and out.device == q.device
        assert out.shape == q.shape
    assert fake.stride() == real.stride()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_backward_formula_equals_autograd_of_the_reference(dtype, tol):
    q, k, v = (t.detach().requires_grad_(True) for t in qkv_views(2, 3, 33, 16, dtype=dtype))
    coef, basis = predictor_inputs(2, 3, 33)
    grad_out = torch.randn(2, 3, 33, 16, dtype=dtype)
    via_op = torch.autograd.grad(OP(q, k, v, coef, basis, 7, 0.25, 1), (q, k, v), grad_out)
    via_ref = torch.autograd.grad(topk_masked_attention_reference(q, k, v, coef, basis, 7, 0.25, 1), (q, k, v),
                                  grad_out)
    for mine, ref in zip(via_op, via_ref):
        assert mine.dtype == dtype and mine.shape == ref.shape
        assert (mine.float() - ref.float()).abs().max() <= tol * max(1.0, ref.float().abs().max())


def test_backward_with_one_key_per_row_follows_the_tie_rule():
    """budget 1, cls_rows 0 and all-zero scores: every row keeps key 0 (ties go to the lower index)."""
    q, k, v = (torch.randn(1, 1, 5, 4, requires_grad=True) for _ in range(3))
    coef, basis = torch.zeros(1, 1, 5, 2), torch.zeros(2, 5)
    grads = torch.autograd.grad(OP(q, k, v, coef, basis, 1, 1.0, 0).sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(grads[2][0, 0, 0], torch.full((4,), 5.0))  # all five rows read v[0]
    assert torch.count_nonzero(grads[2][0, 0, 1:]) == 0


@pytest.mark.slow
def test_compiled_op_matches_eager_forward_and_backward():
    """Inductor on CPU: timm's qkv views in, the op's stride asserts hold, gradients match."""
    torch._dynamo.reset()

    def attend(qkv, coef, basis):
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return topk_masked_attention(q * 1.5, k, v, coef, basis, 6, 0.3, 1).sum(-1)

    qkv = torch.randn(2, 21, 3, 2, 8, requires_grad=True)
    coef, basis = predictor_inputs(2, 2, 21)
    grad_out = torch.randn(2, 2, 21)
    eager = attend(qkv, coef, basis)
    (eager_grad,) = torch.autograd.grad(eager, qkv, grad_out)
    compiled = torch.compile(attend, fullgraph=True)(qkv, coef, basis)
    (compiled_grad,) = torch.autograd.grad(compiled, qkv, grad_out)
    assert (compiled - eager).abs().max() < 1e-5
    assert (compiled_grad - eager_grad).abs().max() < 1e-5
    with torch.no_grad():
        assert (torch.compile(attend, fullgraph=True)(qkv, coef, basis) - eager).abs().max() < 1e-5
