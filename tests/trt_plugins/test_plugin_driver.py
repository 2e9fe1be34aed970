"""The TensorRT plugin library through a TensorRT-free C++ driver (tests/trt_plugins/plugin_driver).

The driver opens the library as TensorRT does (dlopen, setLoggerFinder, getCreators) and
calls the IPluginV3 methods directly. The real library (nvcc, sm_86) is checked for its
exports, creator fields, both creation phases, output types and shapes, formats,
configuration, workspace and the serialisation round trip; the same glue linked with the
CPU emulator of the kernels runs enqueue end to end against the reference. With a GPU,
enqueue runs on the real library too.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from plugin_driver import FIELD_TYPES, PluginDriver
from sparsifiner import op_spec
from trt_kernel_cases import error_budget, make_case

FLOATS = ("float32", "float16", "bfloat16")
# The demo model's attention: B=2, H=2, N=65, d=32, R=32, budget 16, one CLS row.
Q = (2, 2, 65, 32)
SHAPES = [Q, Q, Q, (2, 2, 64, 32), (32, 65)]
GOOD = [("budget", "int32", 16), ("scale", "float32", 32 ** -0.5), ("cls_rows", "int32", 1)]


@pytest.fixture(scope="module")
def driver(plugin_driver_library, plugin_library):
    return PluginDriver(plugin_driver_library, plugin_library)


@pytest.fixture()
def plugin(driver):
    created = driver.create(GOOD)
    assert created is not None, driver.last_error()
    return created


def expect_error(driver, *fragments):
    message = driver.last_error()
    assert message.startswith(f"{op_spec.OP_NAME} '"), message
    for fragment in fragments:
        assert fragment in message, message


def test_library_exports_only_the_two_entry_points(plugin_library):
    if shutil.which("nm") is None:
        pytest.skip("needs nm (binutils)")
    defined = subprocess.run(["nm", "-D", "--defined-only", str(plugin_library)], capture_output=True, text=True).stdout
    assert sorted(line.split()[-1] for line in defined.splitlines()) == ["getCreators", "setLoggerFinder"]
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(plugin_library)], capture_output=True, text=True).stdout
    assert "nvinfer" not in undefined and "cuda" not in undefined.lower()  # no libnvinfer, CUDA runtime static


def test_creator_advertises_the_op_spec_fields(driver):
    info = driver.creator_info()
    assert (info["name"], info["version"], info["namespace"]) == (
        op_spec.OP_NAME, op_spec.PLUGIN_VERSION, op_spec.PLUGIN_NAMESPACE)
    assert info["creators"] == 1
    expected = [(a.name, FIELD_TYPES["int32" if a.type == "int" else "float32"], 1) for a in op_spec.ATTRIBUTES]
    assert info["fields"] == expected


@pytest.mark.parametrize("phase", ["build", "runtime"])
def test_create_in_both_phases(driver, phase):
    plugin = driver.create(GOOD, phase=phase)
    info = plugin.info()
    assert (info["name"], info["version"], info["namespace"], info["outputs"]) == (
        op_spec.OP_NAME, op_spec.PLUGIN_VERSION, op_spec.PLUGIN_NAMESPACE, 1)
    assert info["fields"]["budget"] == (FIELD_TYPES["int32"], 1, 16)
    assert info["fields"]["scale"][2] == pytest.approx(32 ** -0.5)
    assert info["metadata"].startswith("budget=16 scale=0.17")


def test_defaults_and_wider_field_types(driver):
    """cls_rows may be absent (default 1); int64 and float64 fields are accepted."""
    plugin = driver.create([("scale", "float64", 0.125), ("budget", "int64", 7)])
    fields = plugin.info()["fields"]
    assert list(fields) == list(op_spec.ATTRIBUTE_NAMES)  # serialised in the table's order
    assert (fields["budget"][2], fields["scale"][2], fields["cls_rows"][2]) == (7, 0.125, op_spec.DEFAULT_CLS_ROWS)


@pytest.mark.parametrize("fields,fragments", [
    ([("scale", "float32", 0.1)], ["required attribute 'budget' is missing"]),
    ([("budget", "int32", 0), ("scale", "float32", 0.1)], ["budget must be >= 1, got 0"]),
    ([("budget", "int32", 4), ("scale", "float32", -1.0)], ["scale must be a finite number > 0"]),
    ([("budget", "int32", 4), ("scale", "float32", float("inf"))], ["scale must be a finite number > 0"]),
    ([("budget", "int32", 4), ("scale", "float32", 0.1), ("cls_rows", "int32", -1)], ["cls_rows must be >= 0"]),
    ([("budget", "float32", 4.0), ("scale", "float32", 0.1)], ["'budget' must be an integer field"]),
    ([("budget", "int32", 4), ("scale", "int32", 1)], ["'scale' must be a float field"]),
    ([("budget", "int32", [4, 5]), ("scale", "float32", 0.1)], ["'budget' must hold exactly one value"]),
    ([("budget", "int32", 4), ("budget", "int32", 5), ("scale", "float32", 0.1)], ["'budget' is given twice"]),
    ([("budget", "int32", 4), ("scale", "float32", 0.1), ("topk", "int32", 3)],
     ["unknown attribute 'topk'", "budget, scale, cls_rows"]),
    ([("budget", "int64", 1 << 40), ("scale", "float32", 0.1)], ["does not fit int32"]),
], ids=["missing", "budget0", "scale-neg", "scale-inf", "cls-neg", "budget-float", "scale-int", "length2", "twice",
        "unknown", "int64-overflow"])
@pytest.mark.parametrize("phase", ["build", "runtime"])
def test_bad_fields_are_refused_with_the_reason(driver, fields, fragments, phase):
    assert driver.create(fields, phase=phase, layer="blocks.3.attn") is None
    expect_error(driver, "'blocks.3.attn'", *fragments)


@pytest.mark.parametrize("dtype", FLOATS)
def test_output_type_is_the_type_of_q(plugin, dtype):
    for coef in FLOATS:
        assert plugin.output_type([dtype, dtype, dtype, coef, "float32"]) == (0, dtype)


def test_output_type_refuses_mixed_or_integer_qkv(driver, plugin):
    assert plugin.output_type(["float16", "float32", "float16", "float16", "float16"])[0] != 0
    expect_error(driver, "q, k and v must share one of float32, float16, bfloat16")
    assert plugin.output_type(["int32"] * 5)[0] != 0


def test_output_shape_follows_q(plugin):
    dynamic = [(-1, *s[1:]) for s in SHAPES[:4]] + [SHAPES[4]]
    assert plugin.output_shape(dynamic) == (0, (-1, 2, 65, 32))
    assert plugin.output_shape(SHAPES) == (0, Q)


@pytest.mark.parametrize("shapes,fragments", [
    ([(2, 2, 65, 40)] * 3 + [(2, 2, 64, 32), (32, 65)], ["head dim 40 is not supported"]),
    ([(2, 2, 10, 32)] * 3 + [(2, 2, 9, 32), (32, 10)], ["budget 16 exceeds the N = 10 tokens"]),
    ([Q, Q, Q, (2, 2, 65, 32), (32, 65)], ["coef must be [B, H, N - cls_rows, R]", "coef [2, 2, 65, 32]"]),
    ([Q, Q, Q, (2, 2, 64, 32), (16, 65)], ["basis [16, 65]"]),
    ([Q, (2, 2, 64, 32), Q, (2, 2, 64, 32), (32, 65)], ["k must have the shape of q"]),
    ([Q, Q, Q, (2, 2, 64, 32), (32, 65, 1)], ["basis must be [R, N]"]),
    ([Q, Q, Q, (2, 2, 64, 32)], ["expects 5 inputs"]),
], ids=["head-dim", "budget", "coef-rows", "basis-rank", "k-shape", "basis-rank3", "four-inputs"])
def test_output_shape_refuses_what_the_kernel_cannot_run(driver, plugin, shapes, fragments):
    assert plugin.output_shape(shapes)[0] != 0
    expect_error(driver, *fragments)


def test_format_combinations(plugin):
    """Linear only; q picks the type of k, v and out; coef and basis each take any float type."""
    for q in FLOATS:
        assert plugin.supports(0, [q] * 6)
        for pos in (1, 2, 5):
            for other in FLOATS:
                types = [q] * 6
                types[pos] = other
                assert plugin.supports(pos, types) == (other == q), (q, pos, other)
        for pos in (3, 4):
            for other in FLOATS:
                types = [q] * 6
                types[pos] = other
                assert plugin.supports(pos, types)
    for pos in range(6):
        assert not plugin.supports(pos, ["int8"] * 6)
        formats = ["linear"] * 6
        formats[pos] = "chw32"
        assert not plugin.supports(pos, ["float16"] * 6, formats)
    assert not plugin.supports(6, ["float16"] * 6)


def workspace_bytes(r: int, n: int) -> int:
    """getTopKMaskedAttentionWorkspaceSize: the compressed basis (counts, then a (key, value)
    per entry) and, for R <= 64, kernel v2's region (per-block stats, flags, column
    exponents, the basis packed as fp16 over keys padded to 128 and ranks padded to 16)."""
    def align(x):
        return -(-x // 256) * 256

    csr = align(r * 4) + r * n * 8
    if not 1 <= r <= 64:
        return align(csr)
    flags = align(align(csr) + -(-n // 256) * 16)
    packed = align(flags + 16 + n * 4)
    return packed + -(-n // 128) * 128 * -(-r // 16) * 16 * 2


def test_configure_dynamic_batch_and_workspace(driver, plugin):
    dynamic = [(-1, *s[1:]) for s in SHAPES[:4]] + [SHAPES[4]]
    status, workspace = plugin.configure(dynamic, ["float16"] * 3 + ["float32", "float16"],
                                         min_shapes=[(1, *s[1:]) for s in SHAPES[:4]] + [SHAPES[4]],
                                         max_shapes=[(8, *s[1:]) for s in SHAPES[:4]] + [SHAPES[4]])
    assert status == 0, driver.last_error()
    r, n = SHAPES[4]
    assert workspace == workspace_bytes(r, n)  # any batch
    assert plugin.configure(SHAPES, ["float16"] * 5, out_type="float32")[0] != 0
    expect_error(driver, "out must have the type of q (float16), got float32")
    assert plugin.configure(SHAPES, ["float16", "bfloat16", "float16", "float16", "float16"])[0] != 0
    expect_error(driver, "q, k and v must share one type")


def test_serialisation_round_trip(driver):
    plugin = driver.create([("budget", "int32", 49), ("scale", "float32", 0.125), ("cls_rows", "int32", 2)])
    info = plugin.info()
    for copy in (plugin.roundtrip(), plugin.clone()):
        assert copy is not None, driver.last_error()
        assert copy.info()["fields"] == info["fields"]
        assert copy.info()["metadata"] == "budget=49 scale=0.125 cls_rows=2"
    del plugin  # the copies own their fields
    assert copy.info()["fields"]["budget"][2] == 49


# --- enqueue: the glue end to end on the CPU emulator of the kernels -------------------------------

@pytest.fixture(scope="module")
def emulated(plugin_driver_library, emulated_plugin_library):
    return PluginDriver(plugin_driver_library, emulated_plugin_library)


def run_case(driver, case, device="cpu", stream=0):
    scale = case.scale
    plugin = driver.create([("budget", "int32", case.budget), ("scale", "float32", scale),
                            ("cls_rows", "int32", case.cls_rows)])
    tensors = [t.contiguous().to(device) for t in (case.q, case.k, case.v, case.coef, case.basis)]
    names = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
    shapes = [tuple(t.shape) for t in tensors]
    status, workspace = plugin.configure(shapes, [names[t.dtype] for t in tensors])
    assert status == 0, driver.last_error()
    out = torch.full_like(tensors[0], float("nan"))
    scratch = torch.empty(workspace + 256, dtype=torch.uint8, device=device)  # TensorRT aligns to 256 bytes
    status = plugin.enqueue(tensors, out, (scratch.data_ptr() + 255) // 256 * 256, stream)
    assert status == 0, driver.last_error()
    if device != "cpu":
        torch.cuda.synchronize()
    ref = case.reference_fp32()
    err = (out.float().cpu() - ref).abs().max().item()
    assert err <= error_budget(case, out.dtype, ref), err
    return out


@pytest.mark.parametrize("dtype,coef_dtype,n,d,budget,cls_rows", [
    (torch.float16, None, 65, 32, 16, 1),
    (torch.bfloat16, torch.float32, 50, 64, 7, 0),
    (torch.float32, None, 66, 48, 66, 2),
], ids=["fp16-demo", "bf16-fp32coef", "fp32-dense-budget"])
def test_enqueue_on_the_emulated_kernels(emulated, dtype, coef_dtype, n, d, budget, cls_rows):
    case = make_case(4, n, d, budget, dtype=dtype, coef_dtype=coef_dtype, cls_rows=cls_rows, heads=2, seed=n + d)
    run_case(emulated, case)


def test_enqueue_reports_a_missing_workspace(emulated):
    case = make_case(2, 33, 32, 4, dtype=torch.float16, heads=2)
    plugin = emulated.create([("budget", "int32", 4), ("scale", "float32", case.scale)])
    tensors = [case.q, case.k, case.v, case.coef, case.basis]
    assert plugin.enqueue(tensors, torch.empty_like(case.q), 0) != 0
    expect_error(emulated, "workspace is missing")


def test_enqueue_of_an_empty_batch_is_a_no_op(emulated):
    case = make_case(2, 33, 32, 4, dtype=torch.float16, heads=2)
    plugin = emulated.create([("budget", "int32", 4), ("scale", "float32", case.scale)])
    empty = [t[:0] if t.dim() == 4 else t for t in (case.q, case.k, case.v, case.coef, case.basis)]
    assert plugin.enqueue(empty, empty[0].clone(), 0) == 0


# --- enqueue on a GPU: the real library against the reference -------------------------------------

@pytest.fixture(scope="module")
def gpu_driver(plugin_driver_library):
    from pathlib import Path

    from sparsifiner.runtime.plugin_build import PluginBuildSettings, build_plugin

    major, minor = torch.cuda.get_device_capability()
    library = Path(build_plugin(PluginBuildSettings(archs=(f"{major}{minor}",)))["path"])
    return PluginDriver(plugin_driver_library, library)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,n,d,budget", [
    (torch.float16, 65, 32, 16), (torch.bfloat16, 197, 64, 49), (torch.float32, 197, 64, 49), (torch.float16, 1025, 128, 256),
])
def test_enqueue_on_the_gpu_matches_the_reference(gpu_driver, dtype, n, d, budget):
    case = make_case(6, n, d, budget, dtype=dtype, heads=3, seed=n)
    run_case(gpu_driver, case, device="cuda", stream=torch.cuda.current_stream().cuda_stream)

