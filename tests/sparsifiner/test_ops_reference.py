"""The eager reference of TopKMaskedAttention against a row-by-row gather implementation."""
import math

import pytest
import torch

from sparsifiner.errors import SparsifinerError
from sparsifiner.ops import (
    connectivity_scores,
    masked_softmax,
    sparse_connectivity_scores,
    topk_mask,
    topk_masked_attention,
    topk_masked_attention_reference,
)


def gather_attention(q, k, v, coef, basis, budget, scale, cls_rows):
    """An independent spelling of the op: per row, gather the chosen keys and attend (fp64)."""
    q, k, v = q.double(), k.double(), v.double()
    b, h, n, d = q.shape
    out = torch.empty_like(q)
    scores = coef.double() @ basis.double()
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                if i < cls_rows:
                    keys = torch.arange(n)
                else:
                    s = scores[bi, hi, i - cls_rows].tolist()
                    keys = torch.tensor(sorted(range(n), key=lambda j: (-s[j], j))[:budget])
                logits = (k[bi, hi, keys] @ q[bi, hi, i]) * scale
                out[bi, hi, i] = torch.softmax(logits, 0) @ v[bi, hi, keys]
    return out


def make_inputs(b, h, n, d, r=8, dtype=torch.float32, cls_rows=1):
    q, k, v = (torch.randn(b, h, n, d, dtype=dtype) for _ in range(3))
    coef = torch.rand(b, h, n - cls_rows, r)
    coef = torch.where(coef > 0.5, coef, torch.zeros_like(coef))
    basis = torch.randn(r, n).abs()
    return q, k, v, coef, basis


@pytest.mark.parametrize("n,d,budget", [(50, 64, 7), (197, 48, 49), (50, 48, 50), (50, 64, 1)])
def test_reference_matches_gather(n, d, budget):
    q, k, v, coef, basis = make_inputs(1, 2, n, d)
    out = topk_masked_attention_reference(q, k, v, coef, basis, budget, d ** -0.5)
    expected = gather_attention(q, k, v, coef, basis, budget, d ** -0.5, 1)
    assert (out.double() - expected).abs().max() < 1e-5


def test_reference_matches_gather_n1025():
    """N = 1025: rows are independent, so check a few rows (and the dense CLS row) directly."""
    q, k, v, coef, basis = make_inputs(1, 1, 1025, 64)
    budget = math.ceil(0.25 * 1024)
    out = topk_masked_attention_reference(q, k, v, coef, basis, budget, 0.125)
    scores = connectivity_scores(coef, basis)
    for i in (1, 512, 1024):
        keys = sorted(range(1025), key=lambda j, s=scores[0, 0, i - 1].tolist(): (-s[j], j))[:budget]
        ref = torch.softmax((k[0, 0, keys] @ q[0, 0, i]) * 0.125, 0) @ v[0, 0, keys]
        assert (out[0, 0, i] - ref).abs().max() < 1e-5
    dense = torch.softmax((k[0, 0] @ q[0, 0, 0]) * 0.125, 0) @ v[0, 0]
    assert (out[0, 0, 0] - dense).abs().max() < 1e-5


def test_topk_mask_exact_budget_and_lower_index_ties():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    mask = topk_mask(scores, 2)
    assert mask.sum(-1).tolist() == [2, 2]
    assert mask[0].nonzero().flatten().tolist() == [1, 2]
    assert mask[1].nonzero().flatten().tolist() == [0, 1]
    big = torch.randint(0, 3, (4, 6, 196, 197)).float()  # many ties
    first = topk_mask(big, 49)
    assert torch.equal(first, topk_mask(big.clone(), 49))
    assert (first.sum(-1) == 49).all()


def test_all_equal_scores_pick_first_keys():
    q, k, v, coef, basis = make_inputs(2, 2, 50, 16)
    coef.fill_(0.25)
    basis.fill_(1.0)
    out = topk_masked_attention_reference(q, k, v, coef, basis, 5, 0.25)
    ref = torch.softmax((q[..., 1:, :] @ k[..., :5, :].transpose(-1, -2)) * 0.25, -1) @ v[..., :5, :]
    assert (out[..., 1:, :] - ref).abs().max() < 1e-5


def test_large_logits_and_fp16_stay_finite():
    q, k, v, coef, basis = make_inputs(1, 2, 50, 64)
    out = topk_masked_attention_reference(q * 1e4, k * 1e4, v, coef, basis, 7, 0.125)
    assert torch.isfinite(out).all()
    # fp16 logits of 300 * 300 * 64 overflow half precision; the reference works in fp32
    qh, kh, vh = (t.half() for t in (q * 300, k * 300, v))
    outh = topk_masked_attention_reference(qh, kh, vh, coef, basis, 7, 0.125)
    assert outh.dtype == torch.float16 and torch.isfinite(outh).all()


def test_empty_rows_give_zeros_without_nan_gradients():
    logits = torch.randn(2, 5, requires_grad=True)
    mask = torch.tensor([[True, False, True, False, False], [False] * 5])
    probs = masked_softmax(logits, mask)
    assert torch.equal(probs[1], torch.zeros(5)) and torch.allclose(probs[0].sum(), torch.tensor(1.0))
    probs.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_sparse_scores_equal_dense_product():
    coef = torch.rand(2, 3, 196, 32)
    coef = torch.where(coef > 0.9, coef, torch.zeros_like(coef))
    basis = torch.randn(32, 197)
    basis = torch.where(basis.abs() > 1.5, basis, torch.zeros_like(basis))
    sparse = sparse_connectivity_scores(coef, basis)
    assert sparse.is_sparse and sparse._nnz() < 196 * 197 * 6
    dense = connectivity_scores(coef, basis)
    assert torch.allclose(sparse.to_dense().reshape(dense.shape), dense, atol=1e-6)


def test_custom_op_path_equals_reference_and_grad_path():
    q, k, v, coef, basis = make_inputs(2, 3, 65, 64)
    ref = topk_masked_attention_reference(q, k, v, coef, basis, 16, 0.125)
    with torch.no_grad():
        via_op = topk_masked_attention(q, k, v, coef, basis, 16, 0.125)
    assert torch.equal(via_op, ref)
    q.requires_grad_(True)
    out = topk_masked_attention(q, k, v, coef, basis, 16, 0.125)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("budget", [0, 51])
def test_budget_out_of_range_is_one_clear_error(budget):
    q, k, v, coef, basis = make_inputs(1, 1, 50, 16)
    with pytest.raises(SparsifinerError, match="budget"):
        topk_masked_attention(q, k, v, coef, basis, budget, 0.25)


def test_wrong_coef_shape_is_one_clear_error():
    q, k, v, coef, basis = make_inputs(1, 1, 50, 16)
    with pytest.raises(SparsifinerError, match="coef must be"):
        topk_masked_attention(q, k, v, coef[:, :, 1:], basis, 5, 0.25)
