"""Shared fixtures of the trt_plugins tests: paths, the CUDA toolkit, the CPU emulator, the plugin driver."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # trt_kernel_cases, emulated_kernel

from sparsifiner.ops.cuda_binding import cuda_toolkit_home, plugin_source_dir  # noqa: E402


@pytest.fixture(scope="session")
def plugin_dir() -> Path:
    return plugin_source_dir()


@pytest.fixture(scope="session")
def cuda_home() -> Path:
    home = cuda_toolkit_home()
    if home is None:
        pytest.skip("no CUDA toolkit (nvcc and headers) found; set CUDA_HOME")
    return home


@pytest.fixture(scope="session")
def emulator(tmp_path_factory, plugin_dir, cuda_home):
    """The kernels compiled for the CPU emulator (g++), as an EmulatedKernel."""
    from emulated_kernel import EmulatedKernel, build_emulator

    try:
        library = build_emulator(tmp_path_factory.mktemp("emulator"), plugin_dir, cuda_home)
    except FileNotFoundError:
        pytest.skip("no C++ compiler (g++) to build the CPU emulator")
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"the CPU emulator does not compile:\n{exc.stderr}")
    return EmulatedKernel(library)


@pytest.fixture(scope="session")
def tensorrt_include() -> Path:
    from sparsifiner.errors import SparsifinerError
    from sparsifiner.runtime.plugin_build import find_tensorrt_headers

    try:
        return find_tensorrt_headers().include
    except SparsifinerError as exc:
        pytest.skip(f"no TensorRT headers ({exc})")


@pytest.fixture(scope="session")
def plugin_driver_library(tmp_path_factory, tensorrt_include, cuda_home) -> Path:
    """The TensorRT-free driver (g++, TensorRT headers only)."""
    from plugin_driver import build_driver

    try:
        return build_driver(tmp_path_factory.mktemp("driver"), tensorrt_include, cuda_home)
    except FileNotFoundError:
        pytest.skip("no C++ compiler (g++) to build the plugin driver")
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"the plugin driver does not compile:\n{exc.stderr}")


@pytest.fixture(scope="session")
def emulated_plugin_library(tmp_path_factory, tensorrt_include, plugin_dir, cuda_home) -> Path:
    """The plugin glue linked with the kernels on the CPU emulator (takes host pointers)."""
    from plugin_driver import build_emulated_plugin

    try:
        return build_emulated_plugin(tmp_path_factory.mktemp("emulated_plugin"), tensorrt_include, plugin_dir, cuda_home)
    except FileNotFoundError:
        pytest.skip("no C++ compiler (g++) to build the emulated plugin")
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"the emulated plugin does not compile:\n{exc.stderr}")
