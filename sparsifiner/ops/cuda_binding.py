"""The torch binding of the TopKMaskedAttention CUDA kernels: build on demand, load, register.

``load_cuda_binding()`` compiles ``trt_plugins/topkMaskedAttention`` (the kernels and their
torch binding) with ``torch.utils.cpp_extension`` into a cache directory the first time
it is called, then registers the binding as the CUDA implementation of the torch.library
op ``sparsifiner::topk_masked_attention`` (so ``sparsifiner.ops.topk_masked_attention``
runs the kernel on CUDA tensors). Importing this module builds nothing and imports no
compiler machinery; ``import sparsifiner.ops`` does not import it at all.

Without a CUDA GPU or the CUDA toolkit, ``load_cuda_binding`` raises ``SparsifinerError``
with a one-line message saying what to do; the eager reference keeps working.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import threading
from pathlib import Path

from sparsifiner.errors import SparsifinerError
from sparsifiner.ops.native_build import plugin_source_dir

EXTENSION_NAME = "sparsifiner_topk_attention"
ALGORITHMS = {"auto": 0, "tiled": 1, "rowwise": 2}
SOURCES = (
    "topkMaskedAttentionTorch.cpp",
    "topkMaskedAttentionKernel.cu",
    "topkMaskedAttentionTiledHalf.cu",
    "topkMaskedAttentionTiledBf16.cu",
)
CACHE_ENV = "SPARSIFINER_KERNEL_CACHE"

_module = None
_lock = threading.Lock()


def cuda_toolkit_home() -> Path | None:
    """A CUDA toolkit with nvcc and headers: $CUDA_HOME, $CUDA_PATH, nvcc on PATH, /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parents[1]))
    candidates.append("/usr/local/cuda")
    for candidate in candidates:
        if candidate and (Path(candidate) / "bin" / "nvcc").exists():
            if (Path(candidate) / "include" / "cuda_runtime_api.h").exists():
                return Path(candidate)
    return None


def _source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(plugin_source_dir().iterdir()):
        if path.suffix in {".h", ".cuh", ".cu", ".cpp"}:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """Where the extension is built: $SPARSIFINER_KERNEL_CACHE, else ~/.cache/sparsifiner,
    one subfolder per torch/CUDA version and source digest (edits rebuild)."""
    import torch

    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparsifiner"
    tag = f"torch{torch.__version__}-cuda{torch.version.cuda}-{_source_digest()}".replace("+", "_")
    return Path(root) / "kernels" / tag


def cuda_binding_available() -> bool:
    """True when the kernel is loaded or could be built here (a CUDA GPU and the toolkit)."""
    if _module is not None:
        return True
    import torch

    return torch.cuda.is_available() and cuda_toolkit_home() is not None


def _check_environment() -> Path:
    import torch

    if torch.version.cuda is None:
        raise SparsifinerError(
            "the TopKMaskedAttention CUDA kernel needs a CUDA build of torch; install one, "
            "or use the reference (sparsifiner.ops.topk_masked_attention_reference)"
        )
    if not torch.cuda.is_available():
        raise SparsifinerError(
            "the TopKMaskedAttention CUDA kernel needs a CUDA GPU and torch sees none; run on a GPU "
            "machine, or use the reference (sparsifiner.ops.topk_masked_attention_reference)"
        )
    home = cuda_toolkit_home()
    if home is None:
        raise SparsifinerError(
            "building the TopKMaskedAttention CUDA kernel needs the CUDA toolkit (nvcc and headers); "
            "install it and set CUDA_HOME"
        )
    return home


def _import_built(build_dir: Path):
    for path in build_dir.glob(f"{EXTENSION_NAME}*.so"):
        loader = importlib.machinery.ExtensionFileLoader(EXTENSION_NAME, str(path))
        spec = importlib.util.spec_from_loader(EXTENSION_NAME, loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        return module
    return None


def _build(build_dir: Path, home: Path, verbose: bool):
    import torch  # noqa: F401 - the extension links against torch's libraries
    from torch.utils import cpp_extension

    # torch guesses CUDA_HOME once at import; a wrapper nvcc on PATH can mislead it.
    if not cpp_extension.CUDA_HOME or not (Path(cpp_extension.CUDA_HOME) / "include" / "cuda_runtime_api.h").exists():
        cpp_extension.CUDA_HOME = str(home)
    src = plugin_source_dir()
    return cpp_extension.load(
        name=EXTENSION_NAME,
        sources=[str(src / name) for name in SOURCES],
        extra_include_paths=[str(src)],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "-lineinfo"],
        build_directory=str(build_dir),
        verbose=verbose,
    )


def _register_cuda_impl(module) -> None:
    from sparsifiner.ops.custom_op import topk_masked_attention_op

    def cuda_impl(q, k, v, coef, basis, budget, scale, cls_rows):
        # The binding allocates the output like its contiguous copy of q: a new contiguous
        # tensor in q's dtype, the layout the op's fake implementation promises to compile.
        return module.forward(q, k, v, coef, basis, budget, scale, cls_rows, ALGORITHMS["auto"])

    topk_masked_attention_op.register_kernel("cuda")(cuda_impl)


def load_cuda_binding(build: bool = True, verbose: bool = False):
    """The compiled extension (module with ``forward`` and ``resolve_algo``), loaded once.

    build=False only loads an extension already built in ``cache_dir()``. On success the
    CUDA implementation of ``sparsifiner::topk_masked_attention`` is registered.
    Raises SparsifinerError (one line, says what to do) when it cannot load.
    """
    global _module
    with _lock:
        if _module is not None:
            return _module
        home = _check_environment()
        build_dir = cache_dir()
        module = _import_built(build_dir) if not build else None
        if module is None and not build:
            raise SparsifinerError(
                f"the TopKMaskedAttention CUDA kernel is not built in {build_dir}; call load_cuda_binding(build=True)"
            )
        if module is None:
            build_dir.mkdir(parents=True, exist_ok=True)
            try:
                module = _build(build_dir, home, verbose)
            except Exception as exc:  # noqa: BLE001 - compiler errors come in many types
                raise SparsifinerError(
                    f"building the TopKMaskedAttention CUDA kernel failed ({type(exc).__name__}); "
                    "rerun load_cuda_binding(verbose=True) to see the compiler output"
                ) from exc
        _register_cuda_impl(module)
        _module = module
        return module


def topk_masked_attention_cuda(q, k, v, coef, basis, budget: int, scale: float, cls_rows: int = 1, *, algo="auto"):
    """Call the kernel directly, choosing the algorithm ("auto", "tiled", "rowwise")."""
    if algo not in ALGORITHMS:
        raise SparsifinerError(f"unknown algorithm {algo!r}; use one of {sorted(ALGORITHMS)}")
    return load_cuda_binding().forward(q, k, v, coef, basis, int(budget), float(scale), int(cls_rows), ALGORITHMS[algo])


def resolve_algorithm(q, k, v, coef, basis, budget: int, scale: float, cls_rows: int = 1, *, algo="auto") -> str:
    """The algorithm a call with these inputs runs on this GPU ("tiled" or "rowwise")."""
    code = load_cuda_binding().resolve_algo(q, k, v, coef, basis, int(budget), float(scale), int(cls_rows), ALGORITHMS[algo])
    return {value: name for name, value in ALGORITHMS.items()}[code]
