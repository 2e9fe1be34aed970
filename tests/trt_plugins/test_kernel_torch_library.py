"""The CUDA kernel as the op's CUDA implementation: opcheck and torch.compile on a GPU (marker `gpu`)."""
from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

OPCHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.fixture(scope="module", autouse=True)
def ext():
    from sparsifiner.ops.cuda_binding import load_cuda_binding

    return load_cuda_binding()


@pytest.fixture(autouse=True)
def fresh_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_opcheck_with_the_kernel_registered(dtype):
    qkv = torch.randn(2, 65, 3, 2, 64, device="cuda", dtype=dtype, requires_grad=True)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # timm's strided views
    coef = torch.rand(2, 2, 64, 8, device="cuda")
    coef = torch.where(coef > 0.5, coef, torch.zeros_like(coef))
    basis = torch.rand(8, 65, device="cuda")
    op = torch.ops.sparsifiner.topk_masked_attention.default
    out = op(q, k, v, coef, basis, 16, 0.125, 1)
    assert out.is_contiguous() and out.dtype == dtype and out.device == q.device
    results = torch.library.opcheck(op, (q, k, v, coef, basis, 16, 0.125, 1), test_utils=OPCHECKS,
                                    raise_exception=False)
    assert results == {name: "SUCCESS" for name in OPCHECKS}


def test_compiled_sparse_model_on_gpu_matches_eager():
    import timm

    import sparsifiner  # noqa: F401 - registers the sparsifiner_* models
    from sparsifiner.model import prune_basis

    torch.manual_seed(0)
    model = timm.create_model("sparsifiner_deit_tiny_patch16_224")
    prune_basis(model)
    model = model.cuda().eval()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    assert (compiled - eager).abs().max() < 1e-4


def test_compiled_training_step_on_gpu_matches_eager():
    import copy

    import timm

    import sparsifiner  # noqa: F401
    from sparsifiner.model import predictor_parameters, prune_basis

    torch.manual_seed(0)
    model = timm.create_model("sparsifiner_deit_tiny_patch16_224", depth=2, num_classes=10)
    prune_basis(model)
    for param in predictor_parameters(model):
        param.requires_grad_(False)
    model = model.cuda().train()
    twin = copy.deepcopy(model)
    x, labels = torch.randn(3, 3, 224, 224, device="cuda"), torch.tensor([1, 2, 3], device="cuda")
    torch.nn.functional.cross_entropy(model(x), labels).backward()
    torch.nn.functional.cross_entropy(torch.compile(twin, fullgraph=True)(x), labels).backward()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        if a.grad is not None:
            assert (a.grad - b.grad).abs().max() < 1e-3 * max(1.0, a.grad.abs().max().item()), name
