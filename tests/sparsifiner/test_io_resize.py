"""Save/load round trips and resolution transfer."""
import json
import os

import pytest
import torch

from sparsifiner.errors import SparsifinerError
from sparsifiner.model import collect_aux, create_sparsifiner, prune_basis
from sparsifiner.model.io import load_sparsifiner, read_description, save_sparsifiner
from sparsifiner.model.resize import resize_sparsifiner
from sparsifiner.model.zoo import create_demo_sparsifiner
from sparsifiner.settings import SparsifinerSettings


@pytest.fixture()
def demo():
    model = create_demo_sparsifiner(SparsifinerSettings(coef_prune="topk", basis_prune="signed")).eval()
    prune_basis(model)
    return model


def test_save_load_round_trips_exactly(tmp_path, demo):
    path = save_sparsifiner(demo, tmp_path / "demo")
    assert path.name == "demo.safetensors" and (tmp_path / "demo.json").is_file()
    assert json.loads((tmp_path / "demo.json").read_text())["settings"]["basis_prune"] == "signed"
    loaded = load_sparsifiner(path)
    assert loaded.sparsifiner_settings == demo.sparsifiner_settings
    for (k, a), (k2, b) in zip(demo.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(demo(x), loaded(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "demo.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_missing_corrupt_and_foreign_checkpoints(tmp_path, demo):
    with pytest.raises(SparsifinerError, match="not found"):
        load_sparsifiner(tmp_path / "nope.safetensors")
    path = save_sparsifiner(demo, tmp_path / "demo.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(SparsifinerError, match="corrupt, truncated"):
        load_sparsifiner(corrupt)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(SparsifinerError, match="not a Sparsifiner checkpoint"):
        read_description(tmp_path / "plain.safetensors")


def test_checkpoint_of_another_architecture_is_rejected(tmp_path, demo):
    path = save_sparsifiner(demo, tmp_path / "demo.safetensors")
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    state.pop("blocks.0.attn.predictor.w_up")
    meta = {"sparsifiner": json.dumps(read_description(path))}
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(SparsifinerError, match="does not match the model architecture: 1 missing"):
        load_sparsifiner(tmp_path / "bad.safetensors")


def test_unwritable_folder_leaves_nothing(tmp_path, demo):
    with pytest.raises(SparsifinerError, match="does not exist"):
        save_sparsifiner(demo, tmp_path / "missing" / "demo.safetensors")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not __import__("os").access(locked, __import__("os").W_OK):  # root can write anyway
            with pytest.raises(SparsifinerError, match="cannot write"):
                save_sparsifiner(demo, locked / "demo.safetensors")
        assert list(locked.iterdir()) in ([], [locked / "demo.safetensors", locked / "demo.json"],
                                          [locked / "demo.json", locked / "demo.safetensors"])
    finally:
        locked.chmod(0o700)


def test_resize_runs_keeps_cls_entry_and_budget_follows_keep_rate():
    model = create_sparsifiner("deit_tiny_patch16_224", img_size=224).eval()
    prune_basis(model)
    pred = model.blocks[2].attn.predictor
    cls_down, cls_up = pred.p_down[0].clone(), pred.basis[:, 0].clone()
    resize_sparsifiner(model, 384)
    pred = model.blocks[2].attn.predictor
    assert pred.p_down.shape == (577, 32) and pred.basis.shape == (32, 577) and pred.pruned_basis.shape == (32, 577)
    assert torch.equal(pred.p_down[0], cls_down) and torch.equal(pred.basis[:, 0], cls_up)
    assert model.blocks[0].attn.budget == 144
    with torch.no_grad(), collect_aux(model) as aux:
        out = model(torch.randn(1, 3, 384, 384))
    assert out.shape == (1, 1000) and (aux[0]["mask"].sum(-1) == 144).all()


def test_resize_to_the_same_size_changes_nothing(demo):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = demo(x)
        resize_sparsifiner(demo, 32)
        assert torch.equal(before, demo(x))


def test_resize_errors():
    model = create_demo_sparsifiner()
    with pytest.raises(SparsifinerError, match="multiple of the patch size"):
        resize_sparsifiner(model, 30)
    with pytest.raises(SparsifinerError, match="n_down"):
        resize_sparsifiner(model, 16)  # 17 tokens < n_down 32
    with pytest.raises(SparsifinerError, match="resize it with"):  # 101 tokens into a layer built for 65
        model.blocks[0].attn(torch.randn(1, 101, 128))
