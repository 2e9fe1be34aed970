"""sparsifiner.ops.cuda_binding (the torch binding of the CUDA kernels) on a machine without a GPU: cheap imports, clear one-line errors."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sparsifiner.errors import SparsifinerError
from sparsifiner.ops import cuda_binding

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def test_importing_ops_builds_and_loads_nothing():
    code = (
        "import sys, sparsifiner.ops, sparsifiner.ops.cuda_binding; "
        "print('torch.utils.cpp_extension' in sys.modules, sparsifiner.ops.cuda_binding._module is None)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True"]


@no_gpu
def test_load_cuda_binding_without_gpu_says_what_to_do():
    assert not cuda_binding.cuda_binding_available()
    with pytest.raises(SparsifinerError) as info:
        cuda_binding.load_cuda_binding()
    message = str(info.value)
    assert "\n" not in message and "GPU" in message and "reference" in message


def test_unknown_algorithm_is_rejected():
    with pytest.raises(SparsifinerError, match="unknown algorithm"):
        cuda_binding.topk_masked_attention_cuda(None, None, None, None, None, 1, 1.0, algo="fastest")


def test_toolkit_and_cache_locations(tmp_path, monkeypatch):
    fake = tmp_path / "cuda"
    (fake / "bin").mkdir(parents=True)
    (fake / "include").mkdir()
    (fake / "bin" / "nvcc").write_text("")
    (fake / "include" / "cuda_runtime_api.h").write_text("")
    monkeypatch.setenv("CUDA_HOME", str(fake))
    assert cuda_binding.cuda_toolkit_home() == fake
    monkeypatch.setenv(cuda_binding.CACHE_ENV, str(tmp_path / "cache"))
    assert cuda_binding.cache_dir().parent == tmp_path / "cache" / "kernels"
    assert (cuda_binding.plugin_source_dir() / "topkMaskedAttentionKernel.h").is_file()


def test_reference_stays_the_default_on_cpu():
    from sparsifiner.ops import topk_masked_attention, topk_masked_attention_reference
    from trt_kernel_cases import make_case

    case = make_case(2, 20, 32, 5, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(topk_masked_attention(*case.args()), topk_masked_attention_reference(*case.args()))
