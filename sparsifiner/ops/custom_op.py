"""``sparsifiner::topk_masked_attention``: the op as torch.library sees it.

The registered default implementation is the eager reference, on every device; the
CUDA kernel (``sparsifiner.ops.cuda_binding``) registers a faster CUDA implementation when
it is loaded. A fake (meta) implementation lets torch.export and torch.compile trace
the op without running it; the ONNX exporter maps it to the TopKMaskedAttention node.

The op is opaque to autograd. ``topk_masked_attention`` therefore routes calls that
need gradients to the differentiable reference composite, and inference, export and
compile to the op.
"""
from __future__ import annotations

import torch

from sparsifiner import op_spec
from sparsifiner.ops.reference import check_inputs, topk_masked_attention_reference

QUALNAME = f"{op_spec.TORCH_OP_NAMESPACE}::{op_spec.TORCH_OP_NAME}"


@torch.library.custom_op(QUALNAME, mutates_args=())
def topk_masked_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    coef: torch.Tensor,
    basis: torch.Tensor,
    budget: int,
    scale: float,
    cls_rows: int,
) -> torch.Tensor:
    with torch.no_grad():
        return topk_masked_attention_reference(q, k, v, coef, basis, budget, scale, cls_rows)


@topk_masked_attention_op.register_fake
def _(q, k, v, coef, basis, budget, scale, cls_rows):
    return torch.empty_like(q)


def _exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting and is_exporting()) or torch.compiler.is_compiling()


def topk_masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    coef: torch.Tensor,
    basis: torch.Tensor,
    budget: int,
    scale: float,
    cls_rows: int = op_spec.DEFAULT_CLS_ROWS,
) -> torch.Tensor:
    """Budgeted sparse attention (see sparsifiner.op_spec for the contract).

    Differentiable in q, k and v when gradients are needed; otherwise the registered
    op runs (the CUDA kernel on GPU once loaded, else the reference).
    """
    # The mask carries no gradient (METHOD.md section 2.8): coef and basis only select keys.
    coef, basis = coef.detach(), basis.detach()
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if needs_grad and not _exporting():
        return topk_masked_attention_reference(q, k, v, coef, basis, budget, scale, cls_rows)
    if not _exporting():
        check_inputs(q, k, v, coef, basis, budget, cls_rows)
    return torch.ops.sparsifiner.topk_masked_attention(q, k, v, coef, basis, int(budget), float(scale), int(cls_rows))
