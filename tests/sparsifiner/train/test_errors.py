"""Bad input ends with one line on stderr, exit status 2, and nothing half-written in the output folder."""
from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from sparsifiner.cli import cli

TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "32",
        "--set", "timm_kwargs={patch_size: 4, embed_dim: 64, depth: 2, num_heads: 1}",
        "--epochs", "1", "--batch-size", "4", "--no-progress", "--threads", "1"]


def make_folder(root, classes=("a", "b"), per_class=4, empty=(), corrupt=None):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            if name in empty and split == "train":
                continue
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    if corrupt:
        (root / "train" / classes[0] / corrupt).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


def run(args):
    return CliRunner().invoke(cli, args)


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_nothing_written(out):
    if out.exists():
        leftovers = [p.name for p in out.iterdir() if p.suffix in (".safetensors", ".tmp") or p.name.endswith(".tmp")]
        assert not leftovers, leftovers


@pytest.mark.parametrize("workers", ["0", "1"])
def test_corrupt_image(tmp_path, workers):
    data = make_folder(tmp_path / "data", corrupt="bad.png")
    out = tmp_path / "out"
    result = run(["train", "--phase", "teacher", "--data", str(data), "--output", str(out), "--workers", workers,
                  *TINY, "--batch-size", "1"])  # batch 1: no image is dropped by drop_last
    assert_one_line_error(result, "corrupt or unreadable image", "bad.png", "remove or replace it")
    assert_nothing_written(out)


def test_empty_class_folder(tmp_path):
    data = make_folder(tmp_path / "data", classes=("a", "b", "c"), empty=("c",))
    out = tmp_path / "out"
    result = run(["train", "--phase", "teacher", "--data", str(data), "--output", str(out), *TINY])
    assert_one_line_error(result, "has no images", os.path.join("train", "c"))
    assert_nothing_written(out)


def test_missing_data_split(tmp_path):
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    result = run(["train", "--phase", "teacher", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "o"), *TINY])
    assert_one_line_error(result)


def test_checkpoint_of_the_wrong_architecture(tmp_path):
    from safetensors.torch import save_file

    from sparsifiner.model.sparsify import create_timm_model
    from sparsifiner.model.io import save_dense

    other = create_timm_model("vit_tiny_patch16_224", img_size=32, num_classes=10, patch_size=4, embed_dim=64,
                              depth=1, num_heads=1)
    other.sparsifiner_arch = {"model": "vit_tiny_patch16_224", "img_size": [32, 32], "num_classes": 10,
                              "timm_kwargs": {"patch_size": 4, "embed_dim": 64, "depth": 1, "num_heads": 1}}
    ours = save_dense(other, tmp_path / "depth1.safetensors")
    raw = tmp_path / "raw.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(raw))
    for phase, ckpt, fragment in (("1", ours, "not the run's"), ("1", raw, "does not match the model architecture"),
                                  ("2", ours, "not a Sparsifiner checkpoint")):
        out = tmp_path / f"out{phase}{ckpt.stem}"
        result = run(["train", "--phase", phase, "--checkpoint", str(ckpt), "--output", str(out), "--limit", "8", *TINY])
        assert_one_line_error(result, fragment)
        assert_nothing_written(out)


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    result = run(["train", "--phase", "teacher", "--output", str(blocker / "run"), "--limit", "8", *TINY])
    assert_one_line_error(result, "cannot write to the output folder", "choose a writable --output")
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        result = run(["train", "--phase", "teacher", "--output", str(locked), "--limit", "8", *TINY])
        assert_one_line_error(result, "cannot write to the output folder")
        assert not list(locked.iterdir())


def test_bad_settings_are_one_line(tmp_path):
    for args, fragment in ((["--set", "phase1.lr=fast"], "phase1.lr must be a float"),
                           (["--set", "phase9.lr=1"], "unknown training setting phase9"),
                           (["--recipe", "nope"], "unknown recipe 'nope'"),
                           (["--keep-rate", "2"], "keep_rate must be in (0, 1]"),
                           (["--batch-size", "6", "--accum-steps", "4"], "not divisible")):
        result = run(["train", "--output", str(tmp_path / "o"), *TINY, *args])
        assert_one_line_error(result, fragment)
