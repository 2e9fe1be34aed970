"""timm's registry: sparsifiner_* names, timm's keyword habits, hub folders, the round trip to ONNX."""
import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

import sparsifiner
from sparsifiner.errors import SparsifinerError
from sparsifiner.model import budget_of, prune_basis, sparse_layers
from sparsifiner.model.io import load_sparsifiner, read_description, save_hub
from sparsifiner.model.timm_models import BASE_MODELS, variant_name
from sparsifiner.model.zoo import DEMO_IMG_SIZE, DEMO_NUM_CLASSES, DEMO_TIMM_KWARGS

SMALL = "sparsifiner_vit_tiny_patch16_224"
SMALL_KWARGS = {"img_size": 32, "num_classes": 10, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 2}


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.parametrize("first", ["sparsifiner", "timm"])
def test_list_models_after_import_sparsifiner_in_either_order(first):
    code = ("import sys\n"
            + ("import importlib.util, sparsifiner\nimportlib.util.find_spec('timm')  # availability checks do this\n"
               "print('torch' in sys.modules, 'timm' in sys.modules)\nimport timm\n"
               if first == "sparsifiner" else "import timm\nimport sparsifiner\nprint('-')\n")
            + "print(len(timm.list_models('sparsifiner_*')), timm.is_model('sparsifiner_deit_small_patch16_224'))\n"
            + "print(timm.list_models('sparsifiner_*', pretrained=True))")
    lines = run_python(code).splitlines()
    if first == "sparsifiner":
        assert lines[0] == "False False"  # the hook imports neither
    assert lines[1] == f"{len(BASE_MODELS)} True"
    assert lines[2] == "[]"  # no published Sparsifiner weights


@pytest.mark.parametrize("module", ["sparsifiner.layers", "sparsifiner.layers.predictor", "sparsifiner.ops",
                                    "sparsifiner.model"])
def test_registration_when_a_submodule_imports_timm_first(module):
    """timm first imported from inside a half-initialised sparsifiner module: the hook's
    registration still succeeds (no circular import), with no warning."""
    code = (f"import warnings\nwarnings.simplefilter('error')\nimport {module}\nimport timm\n"
            "print(timm.is_model('sparsifiner_deit_small_patch16_224'))")
    assert run_python(code) == "True"


@pytest.mark.slow
def test_every_registered_base_is_supported():
    for base in BASE_MODELS:
        with torch.device("meta"):
            model = timm.create_model(variant_name(base))
        assert len(sparse_layers(model)) == len(model.blocks), base
        assert model.pretrained_cfg["architecture"] == variant_name(base)


def test_create_model_with_timm_keywords():
    torch.manual_seed(0)
    model = timm.create_model("sparsifiner_deit_small_patch16_224", pretrained=False, keep_rate=0.25)
    assert budget_of(model) == 49 and model.num_classes == 1000
    assert model.sparsifiner_arch == {"model": "deit_small_patch16_224", "img_size": [224, 224],
                                      "num_classes": 1000, "timm_kwargs": {}}
    model = timm.create_model("sparsifiner_deit_tiny_patch16_224", num_classes=7, img_size=(96, 128), budget=5,
                              n_down=16, depth=1, mode="dense")
    assert (model.num_classes, tuple(model.patch_embed.img_size), budget_of(model)) == (7, (96, 128), 5)
    assert model.sparsifiner_settings.n_down == 16 and sparse_layers(model)[0].mode == "dense"
    assert model.sparsifiner_arch["timm_kwargs"] == {"depth": 1}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 128)).shape == (1, 7)
    with pytest.raises(SparsifinerError, match="keep_rate"):
        timm.create_model("sparsifiner_deit_tiny_patch16_224", keep_rate=1.5)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """(folder, model, images): a pruned small Sparsifiner saved with save_hub."""
    torch.manual_seed(0)
    model = timm.create_model(SMALL, **SMALL_KWARGS, keep_rate=0.5)
    prune_basis(model)
    model.eval()
    folder = save_hub(model, tmp_path_factory.mktemp("hub") / "small")
    return folder, model, torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_save_hub_writes_timms_layout(hub):
    folder, model, _ = hub
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == SMALL and config["num_classes"] == 10
    assert config["pretrained_cfg"]["architecture"] == SMALL
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["model_args"]["keep_rate"] == 0.5 and config["model_args"]["depth"] == 2
    assert config["sparsifiner"]["settings"] == model.sparsifiner_settings.to_dict()
    assert read_description(folder) == read_description(folder / "model.safetensors") == config["sparsifiner"]


def test_hub_folder_loads_through_timm_and_sparsifiner(hub):
    folder, model, x = hub
    ref = outputs(model, x)
    for file in (folder, folder / "model.safetensors"):
        loaded = timm.create_model(SMALL, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))
        assert torch.equal(outputs(loaded, x), ref)
        assert loaded.pretrained_cfg["file"] == str(file) and loaded.pretrained_cfg["input_size"] == (3, 32, 32)
        assert timm.data.resolve_data_config({}, model=loaded)["input_size"] == (3, 32, 32)
    assert torch.equal(outputs(timm.create_model(f"local-dir:{folder}", pretrained=True), x), ref)
    assert torch.equal(outputs(load_sparsifiner(folder), x), ref)
    assert torch.equal(outputs(sparsifiner.load_sparsifiner(folder / "model.safetensors"), x), ref)


def test_hub_keywords_override_the_checkpoint_like_timm(hub):
    folder, model, x = hub
    overlay = dict(file=str(folder))
    new_head = timm.create_model(SMALL, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=3)
    # timm keeps the pretrained cfg of the weights loaded (10 classes, 32 px), as for its own models.
    assert new_head.num_classes == 3 and new_head.pretrained_cfg["num_classes"] == 10
    with torch.no_grad():
        assert torch.equal(new_head.forward_features(x), model.forward_features(x))
    bigger = timm.create_model(SMALL, pretrained=True, pretrained_cfg_overlay=overlay, img_size=48)
    expected = sparsifiner.resize_sparsifiner(load_sparsifiner(folder), 48)
    x48 = torch.randn(2, 3, 48, 48)
    assert torch.equal(outputs(bigger, x48), outputs(expected, x48))
    assert bigger.pretrained_cfg["input_size"] == (3, 32, 32) and budget_of(bigger) == 72
    fewer_keys = timm.create_model(SMALL, pretrained=True, pretrained_cfg_overlay=overlay, budget=4)
    assert budget_of(fewer_keys) == 4
    assert all(torch.equal(a, b) for a, b in zip(fewer_keys.state_dict().values(), model.state_dict().values()))


def test_dense_timm_weights_load_into_the_backbone(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    dense = timm.create_model("vit_tiny_patch16_224", **SMALL_KWARGS)
    save_file(dense.state_dict(), str(tmp_path / "dense.safetensors"))
    model = timm.create_model(SMALL, pretrained=True, **SMALL_KWARGS,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "dense.safetensors"), num_classes=10))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in dense.state_dict().items())
    assert not sparse_layers(model)[0].predictor._pruned  # an untrained predictor: phase 1 comes next


def test_bad_pretrained_sources_are_one_line_errors(hub, tmp_path):
    folder, _, _ = hub
    with pytest.raises(SparsifinerError, match="not found"):
        timm.create_model(SMALL, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "missing")))
    with pytest.raises(SparsifinerError, match="create sparsifiner_vit_tiny_patch16_224 instead"):
        timm.create_model("sparsifiner_deit_tiny_patch16_224", pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(folder)))
    with pytest.raises(SparsifinerError, match="without model.safetensors"):
        load_sparsifiner(tmp_path)


def test_save_hub_refuses_bad_targets_and_leaves_nothing(tmp_path, hub):
    _, model, _ = hub
    with pytest.raises(SparsifinerError, match="does not exist"):
        save_hub(model, tmp_path / "no" / "such")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SparsifinerError, match="not a folder"):
        save_hub(model, tmp_path / "file")
    with pytest.raises(SparsifinerError, match="sparsify"):
        save_hub(timm.create_model("vit_tiny_patch16_224", **SMALL_KWARGS), tmp_path / "dense")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.slow
def test_registry_round_trip_train_save_reload_export(tmp_path):
    """create through timm, train a few steps on the demo digits, save_hub, reload through timm, export."""
    from torch.utils.data import DataLoader

    from sparsifiner.data import build_datasets
    from sparsifiner.export import ExportSettings, ModelSource, export_onnx
    from sparsifiner.model import predictor_parameters
    from sparsifiner.runtime.ort import create_session

    torch.manual_seed(0)
    model = timm.create_model(SMALL, img_size=DEMO_IMG_SIZE, num_classes=DEMO_NUM_CLASSES, **DEMO_TIMM_KWARGS)
    prune_basis(model)
    for param in predictor_parameters(model):
        param.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, val = build_datasets("digits", model, limit=48)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for images, labels in DataLoader(train, batch_size=16):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert not torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])

    folder = save_hub(model.eval(), tmp_path / "digits")
    images = torch.stack([val[i][0] for i in range(8)])
    reloaded = timm.create_model(SMALL, pretrained=True, pretrained_cfg_overlay=dict(file=str(folder)))
    assert torch.equal(outputs(reloaded, images), outputs(model, images))

    onnx_path = tmp_path / "digits.onnx"
    summary = export_onnx(ExportSettings(source=ModelSource(checkpoint=str(folder))), onnx_path)
    assert summary["trained"] and summary["custom_nodes"] == DEMO_TIMM_KWARGS["depth"]
    out = create_session(onnx_path).run(None, {"input": images.numpy()})[0]
    np.testing.assert_allclose(out, outputs(model, images).numpy(), atol=1e-4, rtol=0)
