"""Shared test setup: deterministic seeds, few threads, the gpu marker's skip, the TensorRT plugin library."""
import os

import pytest
import torch

# The native CPU kernel, once built, would replace the reference for every CPU call of the
# op; the suite keeps the bit-exact reference unless a test loads the kernel itself.
os.environ.setdefault("SPARSIFINER_NATIVE_CPU", "0")


def pytest_configure(config):
    torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def plugin_library():
    """The TensorRT plugin library, built once for sm_86 only (the TensorRT-RTX tests' target;
    one architecture keeps the nvcc build short) and cached by source hash."""
    from pathlib import Path

    from sparsifiner.errors import SparsifinerError
    from sparsifiner.ops.cuda_binding import cuda_toolkit_home
    from sparsifiner.runtime.plugin_build import PluginBuildSettings, build_plugin, find_tensorrt_headers

    if cuda_toolkit_home() is None:
        pytest.skip("no CUDA toolkit (nvcc) to build the TensorRT plugin; set CUDA_HOME")
    try:
        find_tensorrt_headers()
    except SparsifinerError as exc:
        pytest.skip(f"no TensorRT headers to build the plugin ({exc})")
    return Path(build_plugin(PluginBuildSettings(archs=("86",)))["path"])
