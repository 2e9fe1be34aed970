"""``sparsifiner::topk_masked_attention``: the op as torch.library sees it.

The registered default implementation is the eager reference, on every device; the
CUDA kernel (``sparsifiner.ops.cuda_binding``) registers a faster CUDA implementation when
it is loaded, the native CPU kernel (``sparsifiner.ops.cpu_binding``) a CPU one. A fake
(meta) implementation lets torch.export and torch.compile trace the op without running
it; the ONNX exporter maps it to the TopKMaskedAttention node.

Layout: every implementation returns a new contiguous [B, H, N, d] tensor in q's dtype
on q's device, whatever the strides of q, k and v (timm's q, k, v are strided views of
one qkv tensor). The fake returns exactly that, so inductor's stride asserts hold.

Autograd: the op is differentiable in q, k and v (never in coef and basis, which only
select keys). The backward recomputes the key mask and the fp32 probabilities from the
saved inputs (flash-attention style: nothing [N, N] is kept between the passes) and
applies the softmax-attention gradient in fp32. torch.compile and torch.export trace
the op and this formula, so a compiled phase-2 step trains through it. Eager calls that
need gradients run the reference composite directly (the spec), as before.
"""
from __future__ import annotations

import torch

from sparsifiner import op_spec
from sparsifiner.ops.reference import (
    attention_logits,
    check_inputs,
    masked_softmax,
    topk_full_mask,
    topk_masked_attention_reference,
)

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
    # new_empty: contiguous, q's dtype and device (empty_like would copy q's strides).
    return q.new_empty(q.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, coef, basis, budget, scale, cls_rows = inputs
    ctx.save_for_backward(q, k, v, coef, basis)
    ctx.budget, ctx.scale, ctx.cls_rows = budget, scale, cls_rows


def _backward(ctx, grad_out):
    q, k, v, coef, basis = ctx.saved_tensors
    mask = topk_full_mask(coef, basis, ctx.budget, ctx.cls_rows)
    probs = masked_softmax(attention_logits(q, k, ctx.scale), mask)  # P, fp32, zero off the mask
    grad = grad_out.float()
    grad_v = torch.matmul(probs.transpose(-1, -2), grad)
    grad_probs = torch.matmul(grad, v.float().transpose(-1, -2))
    # Softmax backward restricted to the kept keys: P is 0 elsewhere (and on empty rows).
    grad_logits = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdim=True)) * ctx.scale
    grad_q = torch.matmul(grad_logits, k.float())
    grad_k = torch.matmul(grad_logits.transpose(-1, -2), q.float())
    return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), None, None, None, None, None


topk_masked_attention_op.register_autograd(_backward, setup_context=_setup_context)


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

    Differentiable in q, k and v. Eager calls that need gradients run the reference
    composite; inference, export and compile run the registered op (the CUDA kernel on
    GPU once loaded, else the reference), whose autograd formula serves compiled training.
    """
    # The mask carries no gradient (METHOD.md section 2.8): coef and basis only select keys.
    coef, basis = coef.detach(), basis.detach()
    if _exporting():
        return torch.ops.sparsifiner.topk_masked_attention(q, k, v, coef, basis, int(budget), float(scale),
                                                           int(cls_rows))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return topk_masked_attention_reference(q, k, v, coef, basis, budget, scale, cls_rows)
    check_inputs(q, k, v, coef, basis, budget, cls_rows)
    if q.device.type == "cpu":
        # A native CPU kernel built earlier replaces the reference (loaded once, never built here).
        from sparsifiner.ops.cpu_binding import try_load_cpu_binding

        try_load_cpu_binding()
    return torch.ops.sparsifiner.topk_masked_attention(q, k, v, coef, basis, int(budget), float(scale), int(cls_rows))
