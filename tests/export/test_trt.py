"""TensorRT(-RTX) parses and builds the exported graphs ahead of time, without a GPU.

Builds run in a child process (build_engine_isolated): a parser abort cannot take the
test process down. The target is one compute capability (sm86), so no GPU is needed.
"""
import os

import onnx
import pytest

from sparsifiner.errors import SparsifinerError
from sparsifiner.runtime import engine_build, trt_loader

pytestmark = [
    pytest.mark.trt,
    pytest.mark.skipif(not trt_loader.tensorrt_available(),
                       reason="needs TensorRT or TensorRT-RTX (pip install 'sparsifiner[rtx]')"),
]
TARGET = "sm86"


def needs_rtx():
    if not trt_loader.is_rtx(trt_loader.import_tensorrt()):
        pytest.skip("checks a TensorRT-RTX behaviour (classic TensorRT is installed)")


@pytest.mark.parametrize("form", ["decomposed", "dense"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_build_dynamic_batch(exported, form, dtype):
    path, _ = exported("deit", form, dtype=dtype)
    engine = engine_build.build_engine_isolated(path, fp16=dtype == "fp16", max_batch=8, opt_batch=4,
                                               compute_capability=TARGET)
    assert len(engine) > 1_000_000  # the weights are inside


@pytest.mark.parametrize("form", ["decomposed", "dense"])
def test_build_fixed_batch(exported, form):
    path, _ = exported("demo", form, batch=3)
    assert engine_build.build_engine_isolated(path, compute_capability=TARGET)


def test_custom_graph_parses_through_its_local_function(exported):
    """Without the plugin (a later issue) the parser imports the op's function body."""
    path, _ = exported("demo", "custom")
    assert engine_build.build_engine_isolated(path, compute_capability=TARGET)


@pytest.fixture()
def custom_without_function(exported, tmp_path):
    model = onnx.load(str(exported("demo", "custom")[0]))
    del model.functions[:]
    path = tmp_path / "no_function.onnx"
    onnx.save(model, str(path))
    return path


def test_custom_node_without_plugin_is_refused_before_parsing(custom_without_function):
    with pytest.raises(SparsifinerError, match="sparsifiner::TopKMaskedAttention"):
        engine_build.build_engine(custom_without_function, compute_capability=TARGET)


def test_parser_plugin_fallback_fails_cleanly(custom_without_function):
    """The parser's plugin lookup (where RTX dlopens libtensorrt_rtx.so) gives an error, not an abort."""
    with pytest.raises(SparsifinerError, match="cannot parse.*TopKMaskedAttention") as info:
        engine_build.build_engine_isolated(custom_without_function, compute_capability=TARGET, check_plugins=False)
    assert "crashed" not in str(info.value)


def test_rtx_library_link(tmp_path, monkeypatch):
    needs_rtx()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = trt_loader.ensure_rtx_library_link()
    libdir = trt_loader.rtx_library_dir()
    link = folder / trt_loader.RTX_LIBRARY
    assert link.exists() and link.resolve() == (libdir / f"{trt_loader.RTX_LIBRARY}.1").resolve() or folder == libdir
    assert trt_loader.ensure_rtx_library_link() == folder  # idempotent
    env = trt_loader.loader_env({"LD_LIBRARY_PATH": "/opt/x"})
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == [str(folder), "/opt/x"]


def test_rtx_fp16_needs_an_fp16_graph(exported):
    needs_rtx()
    path, _ = exported("demo", "dense", batch=3)
    with pytest.raises(SparsifinerError, match="--dtype fp16"):
        engine_build.build_engine(path, fp16=True, compute_capability=TARGET)


def test_unknown_compute_capability(exported):
    needs_rtx()
    with pytest.raises(SparsifinerError, match="compute capability"):
        engine_build.build_engine(exported("demo", "dense", batch=3)[0], compute_capability="sm1")
