"""A Sparsifiner is a timm model: the checks of timm's tests/test_models.py that apply to a ViT.

Adopted from timm's suite: forward (batch 1 and odd batches, no NaN), backward (every
parameter that trains has a gradient), the default-cfg contract (num_features,
head_hidden_size, forward_features / forward_head / pre_logits, reset_classifier,
num_classes=0, classifier and first_conv names), forward_intermediates, gradient
checkpointing, plus torch.export, strict state dicts, bf16 and timm's data config.
Left out, because they do not apply: TorchScript and FX tracing (the op is a Python
torch.library op), features_only (timm's ViTs have no feature pyramid), pretrained
weight downloads. torch.compile lives in test_compile.py (slow).

Models come from timm's registry: deit_tiny at 224 px and a non-square (160 x 96) one,
both pruned and in sparse mode, the deployable configuration.
"""
import copy

import pytest
import timm
import torch

import sparsifiner
from sparsifiner.model import prune_basis, set_mode

CASES = {"deit_tiny": {}, "non_square": {"img_size": (160, 96)}}
NAME = "sparsifiner_deit_tiny_patch16_224"
BASE = "deit_tiny_patch16_224"


def make(case: str, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(NAME, **CASES[case], **kwargs)
    prune_basis(model)
    return model.eval()


def images(model, batch: int, seed: int = 1):
    return torch.randn(batch, 3, *model.patch_embed.img_size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    return request.param


@pytest.fixture(scope="module")
def model(case):
    return make(case)


def test_forward_batch_one_and_odd_batches_agree(model):
    x = images(model, 3)
    with torch.no_grad():
        batch = model(x)
        singles = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert batch.shape == (3, model.num_classes) and torch.isfinite(batch).all()
    assert (batch - singles).abs().max() < 1e-5  # each image's keys depend on that image only


def test_backward_every_trained_parameter_gets_a_gradient(model):
    model = copy.deepcopy(model).train()
    model.reset_classifier(42)
    out = model(images(model, 2))
    out.mean().backward()
    assert out.shape == (2, 42) and torch.isfinite(out).all()
    predictor = {id(p) for p in sparsifiner.model.predictor_parameters(model)}
    for name, param in model.named_parameters():
        if id(param) in predictor:
            # By design: the mask carries no gradient, and phase 2 freezes the predictor.
            assert param.grad is None, name
        else:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_default_cfg_and_head_contract(case, model):
    model = copy.deepcopy(model)
    cfg = model.default_cfg
    assert cfg is model.pretrained_cfg and cfg["architecture"] == NAME
    base_cfg = timm.models.get_pretrained_cfg(BASE).to_dict()
    for key in ("mean", "std", "crop_pct", "interpolation", "input_size", "num_classes", "first_conv", "classifier"):
        assert cfg[key] == base_cfg[key], key
    assert not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file"))  # no weights of its own
    assert model.num_classes == 1000 and model.num_features == model.head_hidden_size == 192
    state = model.state_dict()
    assert f"{cfg['classifier']}.weight" in state and f"{cfg['first_conv']}.weight" in state

    x = images(model, 1)
    n = model.patch_embed.num_patches + model.num_prefix_tokens
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        pre = model.forward_head(features, pre_logits=True)
        assert features.shape == (1, n, model.num_features)
        assert pre.shape == (1, model.head_hidden_size)
        assert torch.equal(model.forward_head(features), logits)
        model.reset_classifier(0)
        assert model.num_classes == 0
        assert torch.equal(model(x), pre)
        model.reset_classifier(7)
        assert model(x).shape == (1, 7)
    headless = timm.create_model(NAME, num_classes=0, **CASES[case]).eval()
    with torch.no_grad():
        assert headless(x).shape == (1, headless.num_features)


def test_forward_intermediates(model):
    x = images(model, 2)
    grid = model.patch_embed.grid_size
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert len(inter) == len(model.blocks)
        for t in inter:
            assert t.shape == (2, model.embed_dim, *grid) and torch.isfinite(t).all()
        last_two = model.forward_intermediates(x, indices=2, output_fmt="NLC", intermediates_only=True)
        assert [t.shape for t in last_two] == [(2, grid[0] * grid[1], model.embed_dim)] * 2
        assert torch.equal(last_two[-1].transpose(1, 2).reshape(inter[-1].shape), inter[-1])
        pruned = copy.deepcopy(model)
        assert pruned.prune_intermediate_layers(indices=[2, 5], prune_head=True) == [2, 5]
        assert len(pruned.blocks) == 6
        early = pruned.forward_intermediates(x, indices=[2, 5], intermediates_only=True)
        assert all(torch.equal(a, inter[i]) for a, i in zip(early, (2, 5)))


@pytest.mark.slow
def test_grad_checkpointing_keeps_outputs_and_gradients(model):
    model = copy.deepcopy(model).train()
    x = images(model, 1)
    ref_out = model(x)
    ref_out.square().mean().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    out = model(x)
    out.square().mean().backward()
    assert (out - ref_out).abs().max() < 1e-6
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ref_grads.keys()
    assert max((grads[n] - ref_grads[n]).abs().max().item() for n in grads) < 1e-6
    with torch.no_grad():
        final, _ = model.eval().forward_intermediates(x)
        assert (final - model.forward_features(x)).abs().max() < 1e-6


def test_strict_state_dict_round_trip_and_timm_keys(case, model):
    other = copy.deepcopy(model)
    x = images(model, 2)
    with torch.no_grad():
        for tensor in other.state_dict().values():
            tensor.copy_(torch.randn_like(tensor) if tensor.is_floating_point() else tensor)
        assert (other(x) - model(x)).abs().max() > 1e-3
        other.load_state_dict(model.state_dict(), strict=True)
        assert torch.equal(other(x), model(x))
    with torch.device("meta"):
        dense = timm.create_model(BASE, **CASES[case])
    extra = set(model.state_dict()) - set(dense.state_dict())
    assert set(dense.state_dict()) <= set(model.state_dict())  # timm's names, unchanged
    assert extra and all(".attn.predictor." in k for k in extra)


def test_bf16_forward_is_close_to_fp32(model):
    x = images(model, 2)
    low = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        ref, out = model(x), low(x.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_data_config_is_timms(case, model):
    from timm.data import resolve_data_config, resolve_model_data_config

    with torch.device("meta"):
        dense = timm.create_model(BASE, **CASES[case])
    assert resolve_data_config({}, model=model) == resolve_data_config({}, model=dense)
    assert resolve_model_data_config(model) == resolve_model_data_config(dense)


def test_dense_mode_is_timms_model(case, model):
    dense = timm.create_model(BASE, **CASES[case]).eval()
    dense.load_state_dict({k: v for k, v in model.state_dict().items() if ".attn.predictor." not in k})
    mode_dense = set_mode(copy.deepcopy(model), "dense")
    x = images(model, 2)
    with torch.no_grad():
        assert (mode_dense(x) - dense(x)).abs().max() < 1e-5


def test_torch_export_keeps_the_op_and_the_numbers(model):
    x = images(model, 2)
    program = torch.export.export(model, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "sparsifiner.topk_masked_attention.default" in targets
    with torch.no_grad():
        assert (program.module()(x) - model(x)).abs().max() < 1e-5
