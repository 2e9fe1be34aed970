"""Sparsifying timm ViTs: parity with timm, masks, numerics, gradients, unsupported models."""
import copy

import pytest
import timm
import torch

from sparsifiner.errors import SparsifinerError
from sparsifiner.layers import prune_basis_tensor, prune_coefficients
from sparsifiner.model.sparsify import collect_aux, create_sparsifiner, set_mode, sparse_layers, sparsify
from sparsifiner.settings import SparsifinerSettings


@pytest.fixture(scope="module")
def deit_tiny():
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224").eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_budget_equal_to_keys_matches_dense_timm(deit_tiny, images):
    model = sparsify(copy.deepcopy(deit_tiny), SparsifinerSettings(budget=197)).eval()
    with torch.no_grad():
        err = (model(images) - deit_tiny(images)).abs().max().item()
    assert err < 1e-5, err


def test_dense_mode_matches_timm_and_sparse_mode_differs(deit_tiny, images):
    model = sparsify(copy.deepcopy(deit_tiny), mode="dense").eval()
    with torch.no_grad():
        ref = deit_tiny(images)
        assert (model(images) - ref).abs().max() < 1e-5
        set_mode(model, "sparse")
        assert (model(images) - ref).abs().max() > 1e-3


def test_masks_have_budget_ones_and_dense_cls_row(deit_tiny, images):
    model = sparsify(copy.deepcopy(deit_tiny)).eval()
    with torch.no_grad(), collect_aux(model) as aux:
        model(images)
    assert len(aux) == 12
    for block in aux:
        assert block["mask"].shape == (3, 3, 196, 197)
        assert (block["mask"].sum(-1) == 49).all()
        assert torch.allclose(block["sparse_attn"][:, :, 0], block["attn"][:, :, 0])
        kept = block["sparse_attn"][:, :, 1:] > 0
        assert not (kept & ~block["mask"]).any()


def test_aux_path_equals_fast_path(deit_tiny, images):
    model = sparsify(copy.deepcopy(deit_tiny)).eval()
    with torch.no_grad():
        fast = model(images)
        with collect_aux(model):
            slow = model(images)
    assert (fast - slow).abs().max() < 1e-5
    assert all(layer.aux is None and not layer.record_aux for layer in sparse_layers(model))


def test_mask_of_an_image_does_not_depend_on_its_batch(deit_tiny, images):
    model = sparsify(copy.deepcopy(deit_tiny)).eval()
    with torch.no_grad(), collect_aux(model) as batch_aux:
        batch_out = model(images)
    with torch.no_grad(), collect_aux(model) as single_aux:
        single_out = model(images[1:2])
    assert torch.equal(batch_aux[5]["mask"][1:2], single_aux[5]["mask"])
    assert (batch_out[1:2] - single_out).abs().max() < 1e-4


def test_masks_are_deterministic_with_ties(deit_tiny, images):
    model = sparsify(copy.deepcopy(deit_tiny)).eval()
    for layer in sparse_layers(model):  # an all-equal basis makes every score row a tie
        layer.predictor.pruned_basis.fill_(0.5)
        layer.predictor.basis_is_pruned.fill_(True)
        layer.predictor._sync_pruned_flag()
    runs = []
    for _ in range(2):
        with torch.no_grad(), collect_aux(model) as aux:
            model(images)
        runs.append(aux[0]["mask"])
    assert torch.equal(runs[0], runs[1])
    assert runs[0][..., :49].all() and not runs[0][..., 49:].any()


def test_no_nan_for_large_logits_fp16_and_equal_scores(deit_tiny, images):
    model = sparsify(copy.deepcopy(deit_tiny)).eval()
    with torch.no_grad():
        for layer in sparse_layers(model):
            layer.qkv.weight.mul_(30.0)
        assert torch.isfinite(model(images)).all()
        assert torch.isfinite(model.half()(images.half())).all()


def test_basis_pruning_abs_and_signed():
    w = torch.tensor([[0.02, -0.03, 0.005, -0.01, 0.0]])
    assert torch.equal(prune_basis_tensor(w, 0.01, "abs"), torch.tensor([[0.02, 0.03, 0.0, 0.0, 0.0]]))
    assert torch.equal(prune_basis_tensor(w, 0.01, "signed"), torch.tensor([[0.02, -0.03, 0.0, 0.0, 0.0]]))


def test_coefficient_pruning_threshold_and_topk():
    coef = torch.tensor([[0.5, 0.05, 0.3, 0.04, 0.11]])
    float_scores = {"exact_scores": False}
    thr = prune_coefficients(coef, SparsifinerSettings(coef_prune="threshold", coef_threshold=0.05, **float_scores))
    assert torch.equal(thr, torch.tensor([[0.5, 0.0, 0.3, 0.0, 0.11]]))
    top = prune_coefficients(coef, SparsifinerSettings(coef_prune="topk", coef_topk=2, **float_scores))
    assert torch.equal(top, torch.tensor([[0.5, 0.0, 0.3, 0.0, 0.0]]))
    # exact scores: the same pruning, then multiples of 2^-10 (0.3 -> 307/1024, 0.11 -> 113/1024)
    exact = prune_coefficients(coef, SparsifinerSettings(coef_prune="threshold", coef_threshold=0.05))
    assert torch.equal(exact * 1024, torch.tensor([[512.0, 0.0, 307.0, 0.0, 113.0]]))


def test_keep_best_coefficient_leaves_no_row_empty():
    coef = torch.tensor([[0.04, 0.03, 0.045], [0.5, 0.2, 0.3]])
    kept = prune_coefficients(coef, SparsifinerSettings(coef_threshold=0.05, coef_keep_best=True, exact_scores=False))
    assert torch.equal(kept, torch.tensor([[0.0, 0.0, 0.045], [0.5, 0.2, 0.3]]))



def test_phase1_gradients_reach_predictor_and_none_through_mask(deit_tiny, images):
    model = sparsify(copy.deepcopy(deit_tiny), mode="dense").train()
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in sparse_layers(model):
        for p in layer.predictor.parameters():
            p.requires_grad_(True)
    with collect_aux(model) as aux:
        model(images[:1])
    loss = sum(((a["scores"] - a["attn"][:, :, 1:].detach()) ** 2).sum() for a in aux)
    loss.backward()
    pred = sparse_layers(model)[3].predictor
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (pred.proj_q.weight, pred.p_down, pred.w_up))
    assert not aux[0]["mask"].requires_grad
    # sparse mode: the output depends on the predictor only through the mask, so no gradient
    model.zero_grad(set_to_none=True)
    set_mode(model, "sparse")
    for p in model.blocks[-1].mlp.parameters():
        p.requires_grad_(True)
    model(images[:1]).sum().backward()
    assert all(p.grad is None for layer in sparse_layers(model) for p in layer.predictor.parameters())


@pytest.mark.parametrize("changes,match", [
    ({"keep_rate": 0.0}, "keep_rate"),
    ({"keep_rate": 1.5}, "keep_rate"),
    ({"budget": 0}, "budget"),
    ({"coef_prune": "bogus"}, "coef_prune"),
])
def test_bad_settings_raise_one_clear_error(changes, match):
    with pytest.raises(SparsifinerError, match=match):
        SparsifinerSettings(**changes)


def test_budget_above_keys_and_n_down_above_tokens(deit_tiny):
    with pytest.raises(SparsifinerError, match="above the number of keys"):
        sparsify(copy.deepcopy(deit_tiny), SparsifinerSettings(budget=198))
    with pytest.raises(SparsifinerError, match="n_down"):
        sparsify(copy.deepcopy(deit_tiny), SparsifinerSettings(n_down=198))


def test_budget_conventions():
    assert SparsifinerSettings().resolve_budget(197) == 49  # paper: ceil(0.25 * 196)
    assert SparsifinerSettings(budget_tokens="all").resolve_budget(197) == 50  # authors' code
    assert SparsifinerSettings(keep_rate=1.0).resolve_budget(197) == 196


def test_unknown_model_name():
    with pytest.raises(SparsifinerError, match="unknown model name"):
        create_sparsifiner("deit_smoll_patch16_224")


@pytest.mark.parametrize("name,kwargs,match", [
    ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}, "no CLS token"),
    ("vit_tiny_patch16_224", {"reg_tokens": 4}, "register tokens"),
    ("resnet18", {}, "unsupported architecture ResNet"),
])
def test_unsupported_architectures_are_named(name, kwargs, match):
    model = timm.create_model(name, **kwargs)
    with pytest.raises(SparsifinerError, match=match):
        sparsify(model)


def test_other_attention_classes_are_named():
    model = timm.create_model("vit_tiny_patch16_224", depth=2)
    model.blocks[1].attn = torch.nn.Identity()
    with pytest.raises(SparsifinerError, match="unsupported attention Identity in block 1"):
        sparsify(model)
