"""Bad input: one-line SparsifinerError, and no .onnx (or temporary file) left behind."""
import os

import onnx
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sparsifiner.errors import SparsifinerError
from sparsifiner.export import ExportSettings, ModelSource, export_onnx
from sparsifiner.model import prune_basis
from sparsifiner.model.io import METADATA_KEY, save_sparsifiner
from sparsifiner.model.zoo import create_demo_dense, create_demo_sparsifiner


def export_fails(tmp_path, match, **settings):
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir(exist_ok=True)
    with pytest.raises(SparsifinerError, match=match) as info:
        export_onnx(ExportSettings(**settings), out)
    assert "\n" not in str(info.value)
    assert list(out.parent.iterdir()) == []
    return str(info.value)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    phase1 = create_demo_sparsifiner(mode="dense")  # a phase-1 checkpoint: basis not pruned
    paths = {"phase1": save_sparsifiner(phase1, folder / "phase1.safetensors")}
    trained = create_demo_sparsifiner()
    prune_basis(trained)
    paths["pruned"] = save_sparsifiner(trained, folder / "pruned.safetensors")
    save_file(create_demo_dense().state_dict(), str(folder / "dense.safetensors"))  # a plain timm model
    paths["dense"] = folder / "dense.safetensors"
    state = load_file(str(paths["pruned"]))
    state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"][:-3]
    with safe_open(str(paths["pruned"]), framework="pt") as f:
        meta = f.metadata()
    save_file(state, str(folder / "mismatch.safetensors"), metadata={METADATA_KEY: meta[METADATA_KEY]})
    paths["mismatch"] = folder / "mismatch.safetensors"
    return paths


def test_untrained_checkpoint_is_refused_for_sparse_forms(tmp_path, checkpoints):
    source = ModelSource(checkpoint=str(checkpoints["phase1"]))
    for form in ("custom", "decomposed"):
        message = export_fails(tmp_path, "unpruned basis", source=source, attention=form)
        assert "phase 2" in message and "prune_basis" in message


def test_untrained_checkpoint_exports_its_dense_teacher(tmp_path, checkpoints):
    out = tmp_path / "teacher.onnx"
    summary = export_onnx(ExportSettings(source=ModelSource(checkpoint=str(checkpoints["phase1"])),
                                         attention="dense", batch=2), out)
    assert summary["trained"] is True and out.is_file()
    assert not any(n.op_type == "TopK" for n in onnx.load(str(out)).graph.node)


def test_plain_dense_checkpoint(tmp_path, checkpoints):
    export_fails(tmp_path, "not a Sparsifiner checkpoint", source=ModelSource(checkpoint=str(checkpoints["dense"])))


def test_mismatched_checkpoint(tmp_path, checkpoints):
    export_fails(tmp_path, "does not match the model architecture",
                 source=ModelSource(checkpoint=str(checkpoints["mismatch"])))


def test_missing_checkpoint(tmp_path):
    export_fails(tmp_path, "checkpoint not found", source=ModelSource(checkpoint=str(tmp_path / "nope.safetensors")))


def test_checkpoint_image_size_mismatch(tmp_path, checkpoints):
    export_fails(tmp_path, "built for", source=ModelSource(checkpoint=str(checkpoints["pruned"]), img_size=64))


@pytest.mark.parametrize("opset", [11, 16, 99])
def test_unsupported_opset(opset):
    with pytest.raises(SparsifinerError, match="unsupported opset"):
        ExportSettings(source=ModelSource(model_name="demo"), opset=opset)


@pytest.mark.parametrize("kwargs,match", [
    ({"batch": 0}, "--batch"),
    ({"batch": "two words"}, "--batch"),
    ({"attention": "sparse"}, "--attention"),
    ({"dtype": "int8"}, "--dtype"),
])
def test_bad_export_settings(kwargs, match):
    with pytest.raises(SparsifinerError, match=match):
        ExportSettings(source=ModelSource(model_name="demo"), **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({}, "exactly one"),
    ({"checkpoint": "a.safetensors", "model_name": "demo"}, "exactly one"),
    ({"checkpoint": "a.safetensors", "pretrained": True}, "carries its own"),
])
def test_bad_sources(kwargs, match):
    with pytest.raises(SparsifinerError, match=match):
        ModelSource(**kwargs)


def test_unknown_model_name(tmp_path):
    export_fails(tmp_path, "unknown model name", source=ModelSource(model_name="deit_nonexistent_patch16"))


def test_missing_output_folder(tmp_path):
    with pytest.raises(SparsifinerError, match="does not exist"):
        export_onnx(ExportSettings(source=ModelSource(model_name="demo")), tmp_path / "no" / "such" / "m.onnx")
    assert not (tmp_path / "no").exists()


def test_output_must_be_an_onnx_file(tmp_path):
    with pytest.raises(SparsifinerError, match=r"\.onnx"):
        export_onnx(ExportSettings(source=ModelSource(model_name="demo")), tmp_path / "model.pt")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_output_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(SparsifinerError, match="cannot write"):
            export_onnx(ExportSettings(source=ModelSource(model_name="demo")), folder / "m.onnx")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_unwritable_output_is_detected_before_export(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(SparsifinerError, match="cannot write to"):
        export_onnx(ExportSettings(source=ModelSource(model_name="demo")), tmp_path / "m.onnx")


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous export")

    def broken_save(proto, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", broken_save)
    with pytest.raises(SparsifinerError, match="No space left on device"):
        export_onnx(ExportSettings(source=ModelSource(model_name="demo"), attention="dense", batch=1), out)
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
