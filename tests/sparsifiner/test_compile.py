"""torch.compile (inductor, CPU) of Sparsifiner models: sparse and dense inference, a phase-2 step.

Each test compiles from scratch in its own inductor cache folder: a cache filled by an
older version of the op (whose fake implementation had other strides) would replay the
old compiled code and its stride asserts.
"""
import copy

import pytest
import timm
import torch

import sparsifiner  # noqa: F401 - registers the sparsifiner_* models with timm
from sparsifiner.model import predictor_parameters, prune_basis, set_mode
from sparsifiner.train.losses import FeaturesAndLogits, phase2_loss
from sparsifiner.train.settings import PhaseSettings

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def fresh_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def pruned(name="sparsifiner_deit_tiny_patch16_224", **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    prune_basis(model)
    return model


def test_compiled_sparse_inference_matches_eager_deit_tiny():
    model = pruned().eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    assert (compiled - eager).abs().max() < 1e-5


def test_compiled_dense_inference_matches_eager():
    model = set_mode(pruned(img_size=(160, 96), depth=3), "dense").eval()
    x = torch.randn(3, 3, 160, 96)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    assert (compiled - eager).abs().max() < 1e-5


def test_compiled_phase2_step_matches_eager():
    """Phase 2: sparse student, frozen predictor, dense teacher; CE + KL + token loss, an SGD step.

    (SGD rather than phase 2's AdamW: Adam's first step is lr * sign(grad), and the k bias's
    gradient is zero up to rounding, so its sign, and the step, would be noise.)
    """
    student = pruned(img_size=(64, 48), depth=2, num_classes=10, n_down=8).train()
    teacher = set_mode(copy.deepcopy(student), "dense").eval()
    for param in predictor_parameters(student):
        param.requires_grad_(False)
    twin = copy.deepcopy(student)
    x, labels = torch.randn(3, 3, 64, 48), torch.tensor([1, 4, 7])
    with torch.no_grad():
        t_tokens = teacher.forward_features(x)
        t_logits = teacher.forward_head(t_tokens)

    def step(model, forward):
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        tokens, logits = forward(x)
        loss, _ = phase2_loss(logits, tokens, t_logits, t_tokens, labels, PhaseSettings())
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        return loss.detach(), grads

    eager_loss, eager_grads = step(student, FeaturesAndLogits(student))
    compiled_loss, compiled_grads = step(twin, torch.compile(FeaturesAndLogits(twin), fullgraph=True))
    assert (compiled_loss - eager_loss).abs() < 1e-5
    assert compiled_grads.keys() == eager_grads.keys()
    assert not any(".predictor." in name for name in eager_grads)
    for name, grad in eager_grads.items():
        assert (compiled_grads[name] - grad).abs().max() < 1e-4 * max(1.0, grad.abs().max().item()), name
    for (name, a), b in zip(student.named_parameters(), twin.parameters()):
        assert (a - b).abs().max() < 1e-6, name
