"""``build-engine`` takes the Q/DQ graphs of ``sparsifiner calibrate``: TensorRT-RTX builds int8
(sm86) and fp8 (sm89) engines ahead of time with every TopKMaskedAttention node a plugin layer;
fp8 below sm89 is refused in one line. The plugin library is the session's sm_86 build
(tests/conftest.py); an ahead-of-time build never runs its kernels."""
import pytest

from sparsifiner.errors import SparsifinerError
from sparsifiner.runtime import trt_loader
from sparsifiner.runtime.engine_build import EngineBuildSettings, build_engine_file

pytestmark = [
    pytest.mark.trt,
    pytest.mark.skipif(not trt_loader.tensorrt_available(),
                       reason="needs TensorRT or TensorRT-RTX (pip install 'sparsifiner[rtx]')"),
]


@pytest.fixture(autouse=True)
def rtx_only():
    if not trt_loader.is_rtx(trt_loader.import_tensorrt()):
        pytest.skip("ahead-of-time builds for a named compute capability need TensorRT-RTX")


@pytest.mark.parametrize("mode,target", [("int8", "sm86"), ("fp8", "sm89")])
def test_qdq_graph_builds_with_plugin_layers(calibrated, plugin_library, tmp_path, mode, target):
    path, summary = calibrated("custom", mode)
    sidecar = build_engine_file(EngineBuildSettings(str(path), str(tmp_path / f"{mode}.engine"), backend="rtx",
                                                    compute_capability=target, plugin_library=str(plugin_library)))
    assert sidecar["onnx"]["qdq"] == mode
    assert len(sidecar["layers"]["plugin"]) == summary["float_nodes"]["custom"] == 6
    engine_layers = sidecar["layers"]["engine"] or []
    assert sum(layer["type"] == "custom_layer" for layer in engine_layers) == 6


def test_fp8_below_sm89_is_one_line(calibrated, plugin_library, tmp_path):
    path, _ = calibrated("custom", "fp8")
    with pytest.raises(SparsifinerError, match="fp8 Q/DQ, which needs sm89 or later"):
        build_engine_file(EngineBuildSettings(str(path), str(tmp_path / "x.engine"), backend="rtx",
                                              compute_capability="sm86", plugin_library=str(plugin_library)))
    assert not (tmp_path / "x.engine").exists()
