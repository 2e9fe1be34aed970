"""The torch binding of the TopKMaskedAttention CPU kernel: build on demand, load, register.

``load_cpu_binding()`` compiles ``topkMaskedAttentionTorchCpu.cpp`` and the CPU kernel
(``sparsifiner.ops.native_build``: system C++ compiler, torch's headers, cached by source
hash) into a shared library, loads it with ``torch.ops.load_library`` and registers it as
the CPU implementation of ``sparsifiner::topk_masked_attention``. From then on inference
on CPU tensors (evaluation, validation, plain ``model(x)`` under ``torch.no_grad()``) runs
the native kernel; calls that need gradients keep the differentiable reference
(``sparsifiner.ops.custom_op``).

``try_load_cpu_binding()`` loads an existing build and never compiles: the op calls it
once per process, so a build made earlier (by ``load_cpu_binding()``, ``python -m
sparsifiner.runtime.ort_native`` or the tests) is picked up automatically;
``SPARSIFINER_NATIVE_CPU=0`` turns that automatic use off: nothing is loaded behind the
caller's back, and a kernel loaded explicitly (``load_cpu_binding()``, for
``topk_masked_attention_cpu``) starts switched off (the test suite sets it, so other tests
keep the bit-exact reference). ``set_cpu_kernel_enabled`` switches a loaded kernel off and on. Importing this module imports neither torch's compiler machinery nor
the library.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from sparsifiner.errors import SparsifinerError
from sparsifiner.ops import native_build

LIBRARY_NAME = "libsparsifiner_topk_attention_torch_cpu.so"
SOURCES = ("topkMaskedAttentionTorchCpu.cpp",)
DISABLE_ENV = "SPARSIFINER_NATIVE_CPU"
# torch.ops namespace of the library's own ops (forward, forward_tuned, isa).
LIBRARY_NAMESPACE = "sparsifiner_cpu"
STAT_NAMES = ("rows", "sampled_rows", "fallback_rows", "candidates")

_lock = threading.Lock()
_state: dict = {"loaded": None, "tried": False, "enabled": True}


def _torch_flags() -> list[str]:
    import torch

    root = Path(torch.__file__).resolve().parent
    abi = int(bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)))
    return [
        "-std=c++20", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-fopenmp", "-fvisibility=hidden",
        f"-I{native_build.plugin_source_dir()}", f"-isystem{root / 'include'}",
        f"-isystem{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
        f"-L{root / 'lib'}", f"-Wl,-rpath,{root / 'lib'}", "-ltorch_cpu", "-lc10",
    ]


def library_path() -> Path:
    """Where the library of the current sources, torch and CPU lives (built or not)."""
    import torch

    flags = _torch_flags()
    tag = native_build.build_tag("torch-cpu", native_build.kernel_files(SOURCES), flags, torch.__version__)
    return native_build.cache_root() / "kernels" / tag / LIBRARY_NAME


def cpu_binding_loaded() -> bool:
    """True when CPU calls of the op run the native kernel."""
    return _state["loaded"] is not None and _state["enabled"]


def _register(path: Path) -> None:
    import torch

    from sparsifiner.ops.custom_op import topk_masked_attention_op

    from sparsifiner.ops.reference import topk_masked_attention_reference

    torch.ops.load_library(str(path))
    forward = getattr(torch.ops, LIBRARY_NAMESPACE).forward

    def cpu_impl(q, k, v, coef, basis, budget, scale, cls_rows):
        if not _state["enabled"]:
            with torch.no_grad():
                return topk_masked_attention_reference(q, k, v, coef, basis, budget, scale, cls_rows)
        return forward(q, k, v, coef, basis, budget, scale, cls_rows)

    topk_masked_attention_op.register_kernel("cpu")(cpu_impl)


def load_cpu_binding(build: bool = True, verbose: bool = False) -> Path:
    """Load (building it first unless build=False) and register the CPU kernel; returns the library path.

    Raises SparsifinerError with a one-line reason (no compiler, a failed build, not built)."""
    with _lock:
        if _state["loaded"] is not None:
            return _state["loaded"]
        path = library_path()
        if not path.is_file():
            if not build:
                raise SparsifinerError(f"the native CPU kernel is not built in {path.parent}; "
                                       "call sparsifiner.ops.cpu_binding.load_cpu_binding()")
            native_build.compile_library(path, native_build.kernel_files(SOURCES), _torch_flags(),
                                         "the torch TopKMaskedAttention CPU kernel", verbose=verbose)
        try:
            _register(path)
        except (OSError, RuntimeError) as exc:
            raise SparsifinerError(f"cannot load the native CPU kernel {path}: {str(exc).splitlines()[0]}") from exc
        _state["loaded"] = path
        _state["enabled"] = os.environ.get(DISABLE_ENV) != "0"
        return path


def try_load_cpu_binding() -> bool:
    """Load an existing build once per process (never compiles); True when the kernel is registered."""
    if _state["loaded"] is not None:
        return True
    if _state["tried"] or os.environ.get(DISABLE_ENV) == "0":
        return False
    _state["tried"] = True
    try:
        load_cpu_binding(build=False)
        return True
    except SparsifinerError:
        return False


def set_cpu_kernel_enabled(enabled: bool) -> None:
    """Route CPU calls of the op to the loaded native kernel (True) or back to the reference."""
    if _state["loaded"] is None:
        raise SparsifinerError("the native CPU kernel is not loaded; call load_cpu_binding() first")
    _state["enabled"] = bool(enabled)


@contextlib.contextmanager
def reference_cpu_op():
    """Within the block, CPU calls of the op run the eager reference even when the native
    kernel is loaded (validation compares every runtime with the spec)."""
    saved = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = saved


def native_cpu_status(build: bool = False) -> str:
    """A short line for reports: which implementation CPU inference of the op uses, and why."""
    try:
        path = load_cpu_binding(build=build)
    except SparsifinerError as exc:
        return f"reference (eager PyTorch; {exc})"
    import torch

    return f"native C++ kernel ({getattr(torch.ops, LIBRARY_NAMESPACE).isa()}, {path.name})"


def topk_masked_attention_cpu(q, k, v, coef, basis, budget: int, scale: float, cls_rows: int = 1, *,
                              row_block: int = 0, key_tile: int = 0, sample_min_n: int = 0, l1_keys: int = 0,
                              stats: bool = False):
    """Call the kernel directly with its tuning knobs (0 = default); with stats=True also
    return its counters as a dict (rows, sampled_rows, fallback_rows, candidates)."""
    import torch

    load_cpu_binding()
    try:
        out, counters = getattr(torch.ops, LIBRARY_NAMESPACE).forward_tuned(
            q, k, v, coef, basis, int(budget), float(scale), int(cls_rows), int(row_block), int(key_tile),
            int(sample_min_n), int(l1_keys))
    except RuntimeError as exc:
        raise SparsifinerError(str(exc).splitlines()[0]) from exc
    if stats:
        return out, dict(zip(STAT_NAMES, counters.tolist()))
    return out
