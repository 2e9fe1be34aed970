"""`sparsifiner build-plugin`, `build-engine` and `validate --engine` through click's CliRunner.

Bad input gives one line starting with "error:", exit status 2, and nothing on disk.
Without a GPU, validate --engine checks the engine file (TensorRT header, sha256 against
its sidecar, backend and version, plugin library) and then says a GPU is needed.
"""
import json
import shutil

import onnx
import pytest
from click.testing import CliRunner

from sparsifiner import op_spec
from sparsifiner.cli import cli
from sparsifiner.runtime import trt_loader
from sparsifiner.runtime.plugin_build import find_tensorrt_headers

needs_trt = pytest.mark.skipif(not trt_loader.tensorrt_available(),
                               reason="needs TensorRT or TensorRT-RTX (pip install 'sparsifiner[rtx]')")
needs_cpu_only = pytest.mark.skipif(trt_loader.gpu_visible(), reason="checks what happens without a GPU")


@pytest.fixture()
def run():
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, [str(a) for a in args])


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def demo_engine(tmp_path_factory, exported, plugin_library):
    """The demo's custom graph built into an engine by the CLI (TensorRT-RTX, sm86)."""
    if not trt_loader.tensorrt_available() or not trt_loader.is_rtx(trt_loader.import_tensorrt()):
        pytest.skip("builds ahead of time with TensorRT-RTX")
    engine = tmp_path_factory.mktemp("engine") / "demo.engine"
    result = CliRunner().invoke(cli, ["build-engine", str(exported("demo", "custom")[0]), "-o", str(engine),
                                      "--compute-capability", "sm86", "--plugin-lib", str(plugin_library), "--json"])
    assert result.exit_code == 0, result.output
    return engine, json.loads(result.output)


def test_build_plugin_reports_the_cached_library(run, plugin_library, tmp_path):
    include = find_tensorrt_headers().include
    result = run("build-plugin", "--arch", "86", "--tensorrt-include", include, "--output", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["path"] == str(plugin_library) and data["cached"] and data["archs"] == ["sm_86"]
    assert (tmp_path / plugin_library.name).read_bytes() == plugin_library.read_bytes()
    table = run("build-plugin", "--arch", "86", "--tensorrt-include", include)
    assert "found in the cache" in table.output and "trtexec --dynamicPlugins=" in table.output


@pytest.mark.parametrize("args,fragments", [
    (["--arch", "75"], ["the kernels need sm_80 or newer"]),
    (["--arch", "eighty"], ["--arch takes SM versions"]),
    (["--tensorrt-include", "/nonexistent"], ["no NvInferRuntime.h in /nonexistent"]),
])
def test_build_plugin_errors(run, args, fragments):
    one_line_error(run("build-plugin", *args), *fragments)


@needs_trt
def test_build_engine_json_and_table(demo_engine, run, exported, plugin_library, tmp_path):
    engine, sidecar = demo_engine
    assert engine.is_file() and (engine.parent / "demo.engine.json").is_file()
    assert len(sidecar["layers"]["plugin"]) == 6 and sidecar["plugin"]["namespace"] == op_spec.PLUGIN_NAMESPACE
    table = run("build-engine", exported("demo", "custom")[0], "-o", tmp_path / "t.engine", "--compute-capability",
                "sm86", "--plugin-lib", plugin_library, "--no-progress", "--max", 3, "--opt", 2)
    assert table.exit_code == 0, table.output
    assert "6 plugin layers (TopKMaskedAttention v1" in table.output and "min 1 / opt 2 / max 3" in table.output


@needs_trt
@pytest.mark.parametrize("case", ["missing-onnx", "corrupt-onnx", "missing-plugin", "plugin-version", "unsupported",
                                  "sm90", "unknown-cc", "no-gpu", "timing-cache", "fixed-batch", "profile"])
def test_build_engine_errors(run, exported, plugin_library, tmp_path, case):
    if case in ("sm90", "no-gpu", "timing-cache", "unknown-cc") and not trt_loader.is_rtx(trt_loader.import_tensorrt()):
        pytest.skip("TensorRT-RTX refusals")
    if case in ("no-gpu", "timing-cache") and trt_loader.gpu_visible():
        pytest.skip("checks what happens without a GPU")
    custom = exported("demo", "custom")[0]
    onnx_path, extra = custom, ["--compute-capability", "sm86", "--plugin-lib", plugin_library]
    fragments = {
        "missing-onnx": ["ONNX file not found"], "corrupt-onnx": ["not a readable ONNX file"],
        "missing-plugin": ["plugin library not found: /nonexistent.so"],
        "plugin-version": ["plugin not found: TopKMaskedAttention version 7 namespace 'sparsifiner' in",
                           str(plugin_library)],
        "unsupported": ["unsupported node sparsifiner::Mystery"],
        "sm90": ["TensorRT-RTX cannot build for sm90"], "unknown-cc": ["unknown compute capability 'sm7'"],
        "no-gpu": ["no GPU is visible: pass --compute-capability"], "timing-cache": ["--timing-cache needs a GPU"],
        "fixed-batch": ["the graph has a fixed batch"], "profile": ["min <= opt <= max"],
    }[case]
    if case == "missing-onnx":
        onnx_path = tmp_path / "nope.onnx"
    elif case == "corrupt-onnx":
        onnx_path = tmp_path / "bad.onnx"
        onnx_path.write_bytes(b"\x08garbage" * 10)
    elif case == "missing-plugin":
        extra = ["--compute-capability", "sm86", "--plugin-lib", "/nonexistent.so"]
    elif case in ("plugin-version", "unsupported"):
        model = onnx.load(str(custom))
        for node in model.graph.node:
            if node.op_type == op_spec.OP_NAME and case == "unsupported":
                node.op_type = "Mystery"
            for attr in node.attribute:
                if attr.name == op_spec.ATTR_PLUGIN_VERSION:
                    attr.s = b"7"
        onnx_path = tmp_path / f"{case}.onnx"
        onnx.save(model, str(onnx_path))
    elif case == "sm90":
        extra = ["--compute-capability", "sm90", "--plugin-lib", plugin_library]
    elif case == "unknown-cc":
        extra = ["--compute-capability", "sm7", "--plugin-lib", plugin_library]
    elif case == "no-gpu":
        extra = ["--plugin-lib", plugin_library]
    elif case == "timing-cache":
        extra += ["--timing-cache", tmp_path / "cache.bin"]
    elif case == "fixed-batch":
        onnx_path = exported("demo", "dense", batch=3)[0]
        extra += ["--max", 4]
    elif case == "profile":
        extra += ["--min", 4, "--max", 2]
    engine = tmp_path / "out.engine"
    one_line_error(run("build-engine", onnx_path, "-o", engine, "--no-progress", *extra), *fragments)
    assert not engine.exists() and not (tmp_path / "out.engine.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@needs_trt
def test_build_engine_refuses_a_backend_that_is_not_installed(run, exported):
    missing = "trt" if trt_loader.is_rtx(trt_loader.import_tensorrt()) else "rtx"
    one_line_error(run("build-engine", exported("demo", "dense", batch=3)[0], "--backend", missing), "is not installed")


@needs_trt
@pytest.mark.parametrize("case", ["missing", "foreign", "no-sidecar", "corrupt", "version", "backend", "plugin"])
def test_validate_engine_refuses_bad_engines(run, demo_engine, tmp_path, case):
    engine, _ = demo_engine
    target = tmp_path / "model.engine"
    shutil.copyfile(engine, target)
    shutil.copyfile(engine.parent / "demo.engine.json", tmp_path / "model.engine.json")
    sidecar = json.loads((tmp_path / "model.engine.json").read_text())
    extra = []
    fragments = {
        "missing": ["engine file not found"], "foreign": ["is not a TensorRT engine"],
        "no-sidecar": ["has no sidecar model.engine.json", "foreign engine"],
        "corrupt": ["does not match its sidecar (sha256 differs)"],
        "version": ["was built with TensorRT-RTX 0.0.1", "engines load only in the version that built them"],
        "backend": ["is a TensorRT-RTX engine but its sidecar says TensorRT"],
        "plugin": ["is not the plugin library model.engine was built with"],
    }[case]
    if case == "missing":
        target.unlink()
    elif case == "foreign":
        target.write_bytes(b"PK\x03\x04 not an engine")
    elif case == "no-sidecar":
        (tmp_path / "model.engine.json").unlink()
    elif case == "corrupt":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif case in ("version", "backend"):
        sidecar["backend"] = ({"name": "tensorrt_rtx", "version": "0.0.1"} if case == "version"
                              else {"name": "tensorrt", "version": "10.14.1"})
        (tmp_path / "model.engine.json").write_text(json.dumps(sidecar))
    elif case == "plugin":
        other = tmp_path / "other.so"
        other.write_bytes(b"\x7fELF not the plugin")
        extra = ["--plugin-lib", other]
    one_line_error(run("validate", "--engine", target, *extra), *fragments)


@needs_trt
@needs_cpu_only
def test_validate_engine_without_a_gpu(run, demo_engine):
    one_line_error(run("validate", "--engine", demo_engine[0]), "on a CUDA GPU and none is visible")


@pytest.mark.gpu
@needs_trt
def test_build_and_validate_engine_on_the_gpu(run, exported, tmp_path):
    """On a GPU: build-engine for the local GPU (plugin built on demand), then validate --engine against
    PyTorch and ONNX Runtime on the demo digits."""
    import torch

    if trt_loader.is_rtx(trt_loader.import_tensorrt()) and torch.cuda.get_device_capability()[0] == 9:
        pytest.skip("TensorRT-RTX cannot build for this sm90 GPU: needs TensorRT (pip install 'sparsifiner[trt]')")
    engine = tmp_path / "demo.engine"
    built = run("build-engine", exported("demo", "custom")[0], "-o", engine, "--no-progress", "--json")
    assert built.exit_code == 0, built.output
    assert len(json.loads(built.output)["layers"]["plugin"]) == 6
    result = run("validate", "--engine", engine, "--inputs", "demo", "--batch", 8, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["comparisons"]["tensorrt"][0]["top1"] == 1.0
