"""--pretrained without network fails within a second or two, in one line that names --checkpoint."""
from __future__ import annotations

import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from sparsifiner.errors import SparsifinerError
from sparsifiner.model import hub
from sparsifiner.model.sparsify import create_timm_model


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No cached weights anywhere: an empty Hugging Face cache and torch hub folder."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_offline_mode_fails_at_once_from_the_cli(tmp_path, monkeypatch, empty_caches):
    from sparsifiner.cli import cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "data" / split / name / "0.png")
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["train", "--recipe", "deit_small", "--phase", "1", "--pretrained", "--data",
                                      str(tmp_path / "data"), "--output", str(tmp_path / "out"), "--batch-size", "4",
                                      "--workers", "0", "--no-progress"])
    elapsed = time.perf_counter() - start
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "HF_HUB_OFFLINE" in lines[0], result.stderr
    assert "--checkpoint" in lines[0] and "deit_small_patch16_224" in lines[0]
    assert elapsed < 3.0, elapsed
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_unreachable_server_fails_within_the_connect_timeout(monkeypatch, empty_caches):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    start = time.perf_counter()
    with pytest.raises(SparsifinerError, match=r"127\.0\.0\.1 is unreachable .*--checkpoint"):
        create_timm_model("vit_tiny_patch16_224", pretrained=True)
    assert time.perf_counter() - start < hub.CONNECT_TIMEOUT_S + 1.0


def test_cached_weights_and_local_sources_need_no_network(tmp_path, monkeypatch, empty_caches):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = tmp_path / "hf" / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("0" * 40)
    (snapshot / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (snapshot / "snapshots" / ("0" * 40) / "model.safetensors").write_bytes(b"")
    hub.check_pretrained_available("vit_tiny_patch16_224")  # found in the cache: no error
    with pytest.raises(SparsifinerError, match="HF_HUB_OFFLINE"):
        hub.check_pretrained_available("deit_tiny_patch16_224")
    assert hub._target("https://huggingface.co") == ("huggingface.co", 443)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.local:3128")
    assert hub._target("https://huggingface.co") == ("proxy.local", 3128)
    monkeypatch.setenv("NO_PROXY", ".huggingface.co")
    assert hub._target("https://huggingface.co") == ("huggingface.co", 443)
