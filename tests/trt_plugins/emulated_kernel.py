"""Build and call the CPU emulator of the CUDA kernels (tests/trt_plugins/emulator).

Every run also returns the cost-model tally: warp instructions by kernel phase and
instruction class (names in PHASES and OPS, in the emulator's enum order).
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from trt_kernel_cases import ALGO_CODES, DATA_TYPE_CODES, Case

EMULATOR_DIR = Path(__file__).resolve().parent / "emulator"
# The emulator's spfemu::Phase and spfemu::Op, in order (checked against the library).
PHASES = ("prep", "scores", "select", "union", "attend", "fallback", "sample", "filter", "lists", "resolve")
OPS = ("fma", "alu", "bit", "cvt", "mufu", "shfl", "vote", "lds", "sts", "smem_extra", "atoms", "atoms_extra",
       "ldsm", "mma", "ldg", "bar", "other", "g_bytes", "rows", "rows_list", "rows_zero", "rows_v1")
H100_SMEM = 227 * 1024  # opt-in shared memory per block, bytes
A100_SMEM = 163 * 1024


def build_emulator(out_dir: Path, plugin_dir: Path, cuda_home: Path) -> Path:
    library = out_dir / "libspfemu.so"
    command = [
        os.environ.get("CXX", "g++"), "-std=c++17", "-O1", "-g", "-fPIC", "-shared",
        "-Wall", "-Wextra", "-Werror",
        f"-I{cuda_home / 'include'}", f"-I{plugin_dir}", f"-I{EMULATOR_DIR}",
        str(EMULATOR_DIR / "emulator.cpp"), "-o", str(library),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return library


def load_emulator(out_dir: Path | None = None) -> "EmulatedKernel | None":
    """The emulator built from this checkout's kernels and the CUDA toolkit's headers (in
    ``out_dir``, default a new temporary folder); None where the headers are missing."""
    from sparsifiner.ops.cuda_binding import cuda_toolkit_home, plugin_source_dir

    home = cuda_toolkit_home()
    if home is None:
        return None
    out = out_dir or Path(tempfile.mkdtemp(prefix="spf_emulator_"))
    return EmulatedKernel(build_emulator(out, plugin_source_dir(), home))


class EmulatedKernel:
    """The emulated kernels behind the same call as the torch binding's forward()."""

    def __init__(self, library: Path):
        self._lib = ctypes.CDLL(str(library))
        fn = self._lib.spf_emulate
        fn.restype = ctypes.c_int
        fn.argtypes = (
            [ctypes.c_void_p] * 6 + [ctypes.c_int32] * 3 + [ctypes.c_int64] + [ctypes.c_int32] * 5
            + [ctypes.c_float, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_int32),
               ctypes.c_char_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_double)]
        )
        self._fn = fn
        phases, ops = ctypes.c_int32(), ctypes.c_int32()
        self._lib.spf_count_layout(ctypes.byref(phases), ctypes.byref(ops))
        if (phases.value, ops.value) != (len(PHASES), len(OPS)):
            raise RuntimeError(f"emulator tally layout {phases.value}x{ops.value} != {len(PHASES)}x{len(OPS)}")
        self.last_counts: dict[str, dict[str, float]] = {}

    def run(
        self, case: Case, algo: str = "auto", max_smem: int = H100_SMEM, block_stride: int = 1
    ) -> tuple[torch.Tensor, str]:
        """(output, algorithm used); the output starts as NaN so unwritten rows show.
        block_stride > 1 runs only every block_stride-th block (and the last). The run's
        cost-model tally is left in self.last_counts ({phase: {op: warp instructions}})."""
        q, k, v, coef, basis = (t.contiguous() for t in (case.q, case.k, case.v, case.coef, case.basis))
        out = torch.full_like(q, float("nan"))
        error = ctypes.create_string_buffer(512)
        used = ctypes.c_int32(-1)
        tally = (ctypes.c_double * (len(PHASES) * len(OPS)))()
        rc = self._fn(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), coef.data_ptr(), basis.data_ptr(), out.data_ptr(),
            DATA_TYPE_CODES[q.dtype], DATA_TYPE_CODES[coef.dtype], DATA_TYPE_CODES[basis.dtype],
            q.shape[0] * q.shape[1], q.shape[2], q.shape[3], basis.shape[0], case.budget, case.cls_rows,
            case.scale, ALGO_CODES[algo], max_smem, block_stride, ctypes.byref(used), error, len(error), tally,
        )
        if rc != 0:
            raise RuntimeError(f"emulated kernel failed ({rc}): {error.value.decode()}")
        self.last_counts = {ph: {op: tally[i * len(OPS) + j] for j, op in enumerate(OPS)} for i, ph in enumerate(PHASES)}
        names = {code: name for name, code in ALGO_CODES.items()}
        return out, names[used.value]
