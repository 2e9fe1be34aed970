"""ONNX Runtime sessions with the native C++ op: precedence over the local function, "auto",
and validation reports that say which op ran."""
import numpy as np
import pytest

from sparsifiner.errors import SparsifinerError
from sparsifiner.ops import native_build
from sparsifiner.runtime import ort_native
from sparsifiner.runtime.ort import create_session, resolve_op_backend
from sparsifiner.runtime.validate import ValidateSettings, format_report, validate_onnx


@pytest.fixture(scope="module")
def native_library():
    if native_build.find_compiler() is None:
        pytest.skip("no C++ compiler (g++ or clang++) to build the native ONNX Runtime op")
    try:
        return ort_native.native_library_path()
    except SparsifinerError as exc:
        if "headers" in str(exc):
            pytest.skip(f"no ONNX Runtime headers: {exc}")
        raise


@pytest.mark.parametrize("dtype,atol", [("fp32", 1e-5), ("fp16", 2e-2)])
def test_native_op_replaces_the_local_function(exported, native_library, dtype, atol):
    path, _ = exported("demo", "custom", dtype=dtype)
    native, function = create_session(path, "native"), create_session(path, "function")
    feed = {native.get_inputs()[0].name: np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(
        np.float16 if dtype == "fp16" else np.float32)}
    before = ort_native.native_op_calls(native_library)
    out = native.run(None, feed)[0]
    assert ort_native.native_op_calls(native_library) - before == 6  # one call per block: the kernel ran
    np.testing.assert_allclose(out.astype(np.float32), function.run(None, feed)[0].astype(np.float32), atol=atol)


def test_auto_takes_native_only_when_built(native_library, monkeypatch, tmp_path):
    assert resolve_op_backend("auto") == "native"
    monkeypatch.setenv(native_build.CACHE_ENV, str(tmp_path))  # an empty cache: nothing built, nothing fetched
    monkeypatch.setattr(ort_native, "SYSTEM_INCLUDES", ())
    assert resolve_op_backend("auto") == "function"
    with pytest.raises(SparsifinerError, match="--ort-op must be one of auto, function, native, extensions"):
        resolve_op_backend("fast")


def test_validate_reports_the_native_op(exported, native_library):
    path, _ = exported("deit", "custom")
    report = validate_onnx(ValidateSettings(onnx_path=str(path), ort_op="native", batch=2, num_batches=1))
    assert report["passed"] and report["ort_op"] == "native"
    assert report["native_op_calls"] == 2  # 2 blocks x 1 batch
    assert "C++ kernel, 2 calls" in format_report(report)


def test_tile_graphs_never_reach_the_row_kernel(native_library):
    """The native kernel is op version 1: a version-2 (tile) graph runs its local function under
    "auto" and "native" is refused with a one-line error."""
    import onnx

    from sparsifiner import op_spec

    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []),
                                   opset_imports=[onnx.helper.make_opsetid("", 18),
                                                  onnx.helper.make_opsetid(op_spec.OP_DOMAIN, op_spec.OP_VERSION_TILE)])
    assert resolve_op_backend("auto") == "native"
    assert resolve_op_backend("auto", model) == "function"
    with pytest.raises(SparsifinerError, match="use --ort-op function or extensions"):
        resolve_op_backend("native", model)
