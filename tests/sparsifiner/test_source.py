"""One model source and one way to change the budget: ModelSource, load_checkpoint, set_budget."""
import pytest
import torch

from sparsifiner.errors import SparsifinerError
from sparsifiner.model import ModelSource, set_budget, settings_of, sparse_layers
from sparsifiner.model.io import save_dense, save_sparsifiner
from sparsifiner.model.source import dense_teacher, load_checkpoint, load_model, load_sparsifiner_model
from sparsifiner.model.zoo import DEMO_NAME, create_demo_dense, create_demo_sparsifiner
from sparsifiner.settings import SparsifinerSettings


def test_set_budget_keeps_settings_and_layers_consistent():
    model = create_demo_sparsifiner()
    assert set_budget(model, budget=7) == 7
    assert settings_of(model).budget == 7
    assert all(layer.budget == 7 and layer.settings is settings_of(model) for layer in sparse_layers(model))
    assert all(layer.predictor.settings is settings_of(model) for layer in sparse_layers(model))
    assert set_budget(model, keep_rate=0.5) == 32 and settings_of(model).budget is None  # ceil(0.5 * 64 patches)
    with pytest.raises(SparsifinerError, match="above the number of keys"):
        set_budget(model, budget=66)
    assert all(layer.budget == 32 for layer in sparse_layers(model))  # all blocks or none


def test_set_budget_survives_save_and_load(tmp_path):
    model = create_demo_sparsifiner()
    set_budget(model, budget=9)
    loaded, kind = load_checkpoint(save_sparsifiner(model, tmp_path / "m.safetensors"))
    assert kind == "sparsifiner" and all(layer.budget == 9 for layer in sparse_layers(loaded))


def test_load_checkpoint_dense_and_sparse(tmp_path):
    dense = create_demo_dense()
    model, kind = load_checkpoint(save_dense(dense, tmp_path / "teacher.safetensors"))
    assert kind == "dense" and not model.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), dense.eval()(x))
    torch.save({}, tmp_path / "plain.safetensors")  # not a safetensors file at all
    with pytest.raises(SparsifinerError, match="not a readable .safetensors"):
        load_checkpoint(tmp_path / "plain.safetensors")


def test_model_source_random_models_are_reproducible():
    source = ModelSource(model_name=DEMO_NAME, seed=3, settings=SparsifinerSettings(keep_rate=0.5))
    a, trained = load_sparsifiner_model(source)
    b, _ = load_sparsifiner_model(source)
    assert not trained and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    teacher, sparse, _ = load_model(source, "dense")
    assert not hasattr(teacher.blocks[0].attn, "predictor") and sparse is not teacher
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(teacher(x), dense_teacher(a)(x))


@pytest.mark.parametrize("kwargs,message", [
    ({}, "exactly one of --checkpoint"),
    ({"checkpoint": "a.safetensors", "model_name": "demo"}, "exactly one of --checkpoint"),
    ({"checkpoint": "a.safetensors", "pretrained": True}, "carries its own settings"),
    ({"model_name": DEMO_NAME, "img_size": 64}, "fixed size"),
])
def test_model_source_errors(kwargs, message):
    with pytest.raises(SparsifinerError, match=message):
        ModelSource(**kwargs)
