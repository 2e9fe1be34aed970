"""The torch binding compiles against this torch without a GPU (both marked slow).

The syntax check compiles topkMaskedAttentionTorch.cpp against the torch and CUDA
headers (~20 s); the full build runs sparsifiner.ops.cuda_binding's own build path
(torch.utils.cpp_extension, nvcc for one arch, link) and imports the result (~40 s).
"""
from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def test_binding_compiles_against_torch_headers(plugin_dir, cuda_home):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    torch_include = Path(torch.__file__).parent / "include"
    command = [
        cxx, "-std=c++20", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
        "-DTORCH_EXTENSION_NAME=sparsifiner_topk_attention", "-DTORCH_API_INCLUDE_EXTENSION_H",
        "-isystem", str(torch_include), "-isystem", str(torch_include / "torch" / "csrc" / "api" / "include"),
        "-isystem", str(cuda_home / "include"), "-isystem", sysconfig.get_paths()["include"],
        f"-I{plugin_dir}", str(plugin_dir / "topkMaskedAttentionTorch.cpp"),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-6000:]


def test_extension_builds_and_imports(tmp_path, cuda_home, monkeypatch):
    if torch.version.cuda is None:
        pytest.skip("needs a CUDA build of torch")
    from sparsifiner.ops import cuda_binding

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.setenv("MAX_JOBS", "2")
    module = cuda_binding._build(tmp_path, cuda_home, verbose=False)
    assert (module.OP_NAME, module.OP_DOMAIN, module.OP_VERSION) == ("TopKMaskedAttention", "sparsifiner", 1)
    assert callable(module.forward) and callable(module.forward_into) and callable(module.resolve_algo)
    if not torch.cuda.is_available():
        x = torch.zeros(1, 1, 4, 32)
        with pytest.raises(RuntimeError, match="CUDA tensors"):
            module.forward(x, x, x, torch.zeros(1, 1, 3, 2), torch.zeros(2, 4), 2, 1.0, 1, 0)
