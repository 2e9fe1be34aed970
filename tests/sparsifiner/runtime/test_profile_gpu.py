"""Engine profiling on a GPU: CUDA graphs, GPU time, device memory, per-layer times with the plugin's
share, trtexec's profile JSON. Skipped without a GPU (no test here can run on a CPU-only machine)."""
import json

import pytest

from sparsifiner.runtime import trt_loader
from sparsifiner.runtime.profile import ProfileSettings, run_profile
from sparsifiner.runtime.profile_report import write_outputs

pytestmark = [pytest.mark.gpu, pytest.mark.trt,
              pytest.mark.skipif(not trt_loader.tensorrt_available(), reason="needs TensorRT or TensorRT-RTX")]


@pytest.fixture(scope="module")
def demo_engine(tmp_path_factory, plugin_library):
    from sparsifiner.export import ExportSettings, ModelSource, export_onnx
    from sparsifiner.runtime.engine_build import EngineBuildSettings, build_engine_file

    folder = tmp_path_factory.mktemp("engine")
    export_onnx(ExportSettings(source=ModelSource(model_name="demo")), folder / "demo.onnx")
    try:
        build_engine_file(EngineBuildSettings(str(folder / "demo.onnx"), str(folder / "demo.engine"),
                                              plugin_library=str(plugin_library)))
    except Exception as exc:  # e.g. TensorRT-RTX on sm90
        pytest.skip(f"cannot build an engine on this GPU: {exc}")
    return folder


def test_engine_profile_with_and_without_cuda_graph(demo_engine, tmp_path):
    engine, onnx_path = demo_engine / "demo.engine", demo_engine / "demo.onnx"
    settings = ProfileSettings(targets=(str(engine), f"{engine}@nograph", str(onnx_path)), batches=(1, 4),
                               warmup_ms=50, duration=0.5, iterations=20, layer_iterations=5)
    report = run_profile(settings)
    rows = [r for r in report["results"] if r["spec"].endswith(".engine")]
    assert rows and all(r["gpu_ms"]["p50"] > 0 and r["memory"]["device_activation_mib"] >= 0 for r in rows)
    assert report["targets"][0]["cuda_graph"] is True
    layers = report["layers"][0]
    assert layers["plugin_layers"] == 6 and 0 < layers["plugin_share"] < 1
    written = write_outputs(report, tmp_path / "gpu")
    profile = json.loads(open(next(p for p in written if p.endswith(".0.profile.json"))).read())
    assert profile[0]["count"] == 5 and len(profile) - 1 == len(layers["rows"])


def test_onnxruntime_cuda_provider(demo_engine):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    report = run_profile(ProfileSettings(targets=(f"{demo_engine / 'demo.onnx'}@cuda",), duration=0, iterations=3))
    assert report["targets"][0]["providers"][0] == "CUDAExecutionProvider"
