"""The native CPU kernel's torch binding: masks and outputs against the reference, dispatch
of torch.ops.sparsifiner.topk_masked_attention on CPU, the training path untouched.

The binding is built once (cached, ~20 s the first time); without a compiler the tests
skip, saying so.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from cpu_kernel_cases import random_qkv, readout_qkv, reference_mask, structured_inputs, tie_heavy_inputs

from sparsifiner.errors import SparsifinerError
from sparsifiner.ops import cpu_binding, native_build, topk_masked_attention
from sparsifiner.ops.reference import topk_masked_attention_reference


@pytest.fixture(scope="module")
def binding():
    if native_build.find_compiler() is None:
        pytest.skip("no C++ compiler (g++ or clang++) to build the native CPU kernel")
    path = cpu_binding.load_cpu_binding()
    cpu_binding.set_cpu_kernel_enabled(True)
    yield path
    cpu_binding.set_cpu_kernel_enabled(False)  # later tests keep the reference


def kernel(*args, **kwargs):
    return cpu_binding.topk_masked_attention_cpu(*args, **kwargs)


@pytest.mark.parametrize("b,h,n,r,c,budget", [(1, 2, 197, 32, 1, 49), (2, 2, 65, 16, 1, 65), (1, 1, 1025, 32, 1, 256),
                                              (1, 3, 40, 4, 0, 1), (1, 1, 4097, 32, 1, 49)])
def test_masks_equal_reference(binding, b, h, n, r, c, budget):
    coef, basis = (tie_heavy_inputs if n < 1000 else structured_inputs)(b, h, n, r, c, seed=budget)
    q, k, v = readout_qkv(b, h, n)
    mask = kernel(q, k, v, coef, basis, budget, 1.0, c) > 0
    assert torch.equal(mask, reference_mask(coef, basis, budget, c))


@pytest.mark.parametrize("knobs", [dict(row_block=1, key_tile=16, l1_keys=-1), dict(row_block=7, key_tile=100, sample_min_n=-1),
                                   dict(row_block=64, key_tile=4097, sample_min_n=256, l1_keys=-1),
                                   dict(row_block=5, l1_keys=17)])
def test_tuning_knobs_never_change_the_mask(binding, knobs):
    coef, basis = structured_inputs(1, 1, 1025, 32, 1, seed=1)
    q, k, v = random_qkv(1, 1, 1025, 32, seed=2)
    base = kernel(q, k, v, coef, basis, 256, 0.2, 1)
    tuned, stats = kernel(q, k, v, coef, basis, 256, 0.2, 1, stats=True, **knobs)
    torch.testing.assert_close(tuned, base, atol=2e-6, rtol=1e-5)
    assert stats["rows"] == 1024
    assert (stats["sampled_rows"] > 0) == (knobs.get("sample_min_n", 0) in (0, 256))


def test_sampled_threshold_rarely_rescans(binding):
    coef, basis = structured_inputs(1, 2, 4097, 32, 1, seed=3)
    q, k, v = random_qkv(1, 2, 4097, 64, seed=4)
    _, stats = kernel(q, k, v, coef, basis, 49, 0.125, 1, stats=True)
    assert stats["sampled_rows"] == stats["rows"] == 2 * 4096
    assert stats["fallback_rows"] <= 0.02 * stats["rows"]
    assert stats["candidates"] <= 8 * 49 * stats["rows"]


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-6), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_outputs_match_reference(binding, dtype, atol):
    coef, basis = structured_inputs(2, 3, 197, 32, 1, seed=5)
    q, k, v = random_qkv(2, 3, 197, 64, seed=6, dtype=dtype)
    out = kernel(q, k, v, coef.to(dtype), basis.to(dtype), 49, 0.125, 1)
    ref = topk_masked_attention_reference(q, k, v, coef.to(dtype), basis.to(dtype), 49, 0.125, 1)
    assert out.dtype == dtype
    assert (out.float() - ref.float()).abs().max() <= atol


def test_op_dispatches_to_the_kernel_on_cpu_and_keeps_gradients(binding):
    coef, basis = structured_inputs(1, 2, 65, 16, 1, seed=7)
    q, k, v = readout_qkv(1, 2, 65)
    with torch.no_grad():
        out = torch.ops.sparsifiner.topk_masked_attention(q, k, v, coef, basis, 16, 1.0, 1)
    torch.testing.assert_close(out, kernel(q, k, v, coef, basis, 16, 1.0, 1), atol=0, rtol=0)
    qg, kg, vg = [t.requires_grad_() for t in random_qkv(1, 2, 65, 32, seed=8)]
    topk_masked_attention(qg, kg, vg, coef, basis, 16, 0.2, 1).sum().backward()  # the reference composite
    assert qg.grad is not None and kg.grad is not None and vg.grad is not None


def test_bad_input_raises_a_one_line_error(binding):
    coef, basis = structured_inputs(1, 1, 65, 16, 1, seed=9)
    q, k, v = random_qkv(1, 1, 65, 32, seed=10)
    with pytest.raises(SparsifinerError, match="budget 0 is out of range"):
        kernel(q, k, v, coef, basis, 0, 0.2, 1)
    with pytest.raises(SparsifinerError, match="coef must be"):
        kernel(q, k, v, coef[:, :, 1:], basis, 4, 0.2, 1)
    with pytest.raises(SparsifinerError, match="must be float32, float16 or bfloat16"):
        kernel(q.double(), k.double(), v.double(), coef, basis, 4, 0.2, 1)
    with pytest.raises(SparsifinerError, match="scale must be finite"):
        kernel(q, k, v, coef, basis, 4, float("inf"), 1)


def test_model_forward_uses_the_kernel_and_matches_the_reference(binding):
    """A sparse model in eval mode runs the native kernel; its logits equal the reference's."""
    import sparsifiner
    from sparsifiner import SparsifinerSettings

    model = sparsifiner.create_sparsifiner("vit_tiny_patch16_224", SparsifinerSettings(keep_rate=0.25), img_size=32,
                                           num_classes=10, patch_size=4, embed_dim=64, depth=2, num_heads=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fast = model(x)
    assert sum(e.name == f"{cpu_binding.LIBRARY_NAMESPACE}::forward" for e in prof.events()) == 2  # one per block
    with torch.no_grad(), cpu_binding.reference_cpu_op(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        slow = model(x)
    assert not any(e.name == f"{cpu_binding.LIBRARY_NAMESPACE}::forward" for e in prof.events())
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


def test_native_cpu_can_be_turned_off(binding):
    script = "from sparsifiner.ops import cpu_binding; print(cpu_binding.try_load_cpu_binding())"
    env = {**__import__("os").environ, cpu_binding.DISABLE_ENV: "0"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr[-1000:]


def test_a_built_kernel_is_picked_up_by_a_fresh_process(binding):
    env = {**__import__("os").environ, cpu_binding.DISABLE_ENV: "1"}
    script = ("import torch; from sparsifiner.ops import cpu_binding, topk_masked_attention; "
              "q = torch.randn(1, 1, 8, 16); coef = torch.rand(1, 1, 7, 4); basis = torch.rand(4, 8); "
              "topk_masked_attention(q, q, q, coef, basis, 3, 0.25); print(cpu_binding.cpu_binding_loaded())")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout.strip() == "True", proc.stderr[-1000:]
