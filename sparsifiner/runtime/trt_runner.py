"""Run a built engine on the GPU: ``TrtRunner``, with torch device buffers and a torch stream.

Same interface as the other runners (``name``, ``activate()``, ``infer(feed) -> dict``):
a feed is ``{input_name: numpy array}``, the result ``{output_name: float32 numpy array}``.
Inputs are converted to the engine's input types (fp16/bf16 engines take fp16/bf16), the
batch shape is set per call within the engine's profile, outputs are allocated as torch
CUDA tensors and the engine runs with ``execute_async_v3`` on a torch stream (no pycuda).

``activate()`` checks the engine file first (``runtime.engine_file.open_engine``: TensorRT
magic, sha256 against the sidecar, backend and version), then needs a CUDA GPU, loads the
plugin library the sidecar names (or the one given; its sha256 must match the build's)
and deserializes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from sparsifiner.errors import SparsifinerError

_TORCH_TYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                "BOOL": "bool", "INT8": "int8", "UINT8": "uint8"}


def engine_backend(sidecar: dict):
    """The installed module able to load an engine of this sidecar's backend."""
    from sparsifiner.runtime.trt_loader import import_backend

    return import_backend("rtx" if sidecar["backend"]["name"] == "tensorrt_rtx" else "trt")


def installed_backend(sidecar: dict) -> tuple:
    """(name, version) of the installed backend of the engine's kind, else of the one installed."""
    from sparsifiner.runtime.engine_file import BACKEND_LABELS
    from sparsifiner.runtime.trt_loader import backend_name, import_tensorrt, tensorrt_available

    try:
        trt = engine_backend(sidecar)
    except SparsifinerError:
        built = sidecar["backend"]
        if not tensorrt_available():
            raise SparsifinerError(f"the engine needs {BACKEND_LABELS.get(built['name'], built['name'])} "
                                   f"{built['version']}, and no TensorRT is installed") from None
        trt = import_tensorrt()
    return backend_name(trt), trt.__version__


def check_engine(engine_path, plugin_library: Optional[str] = None):
    """The checked EngineFile and the plugin library to load with it (no GPU needed)."""
    from sparsifiner.runtime.engine_file import check_installed_backend, open_engine
    from sparsifiner.runtime.plugin_build import file_sha256

    engine = open_engine(engine_path)
    check_installed_backend(engine.path, engine.sidecar, installed_backend(engine.sidecar))
    plugin = engine.sidecar.get("plugin")
    library = plugin_library or (plugin or {}).get("library")
    if plugin:
        if not library or not Path(library).is_file():
            raise SparsifinerError(f"the engine needs the plugin library {plugin['library']}, which is gone: "
                                   "pass --plugin-lib (the library it was built with) or rebuild the engine")
        if file_sha256(library) != plugin.get("sha256"):
            raise SparsifinerError(f"{library} is not the plugin library {Path(engine_path).name} was built with "
                                   "(sha256 differs): pass that library or rebuild the engine")
    return engine, (library if plugin else None)


class TrtRunner:
    """Runs an engine built by ``sparsifiner build-engine`` on the local GPU."""

    name = "tensorrt"

    def __init__(self, engine_path, plugin_library: Optional[str] = None, device: int = 0):
        self.engine_path, self.plugin_library, self.device = Path(engine_path), plugin_library, device
        self.engine: Any = None
        self.context: Any = None
        self.stream: Any = None
        self.trt: Any = None
        self.logger: Any = None
        self.sidecar: dict = {}

    def activate(self) -> None:
        if self.context is not None:
            return
        import torch

        from sparsifiner import op_spec
        from sparsifiner.runtime.trt_loader import load_plugin_library, make_logger

        checked, library = check_engine(self.engine_path, self.plugin_library)
        self.sidecar = checked.sidecar
        if not torch.cuda.is_available():
            raise SparsifinerError("running a TensorRT engine needs a CUDA GPU and torch sees none: "
                                   "run validate --engine on the GPU machine")
        trt = engine_backend(self.sidecar)
        if library is not None:
            plugin = self.sidecar["plugin"]
            load_plugin_library(trt, library, op_spec.OP_NAME, plugin["version"], plugin["namespace"])
        torch.cuda.set_device(self.device)
        self.logger = make_logger(trt)
        engine = trt.Runtime(self.logger).deserialize_cuda_engine(checked.data)
        if engine is None:
            why = self.logger.errors[-1] if self.logger.errors else "no details"
            raise SparsifinerError(f"TensorRT cannot deserialize {self.engine_path.name}: {why}")
        self.trt, self.engine = trt, engine
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)

    def _torch_dtype(self, name: str):
        import torch

        return getattr(torch, _TORCH_TYPES[str(self.engine.get_tensor_dtype(name)).split(".")[-1]])

    def infer(self, feed: dict) -> dict:
        import numpy as np
        import torch

        self.activate()
        trt = self.trt
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        keep = []
        with torch.cuda.device(self.device):
            for name in inputs:
                array = torch.from_numpy(np.ascontiguousarray(feed[name]))
                tensor = array.to(device=f"cuda:{self.device}", dtype=self._torch_dtype(name)).contiguous()
                if not self.context.set_input_shape(name, tuple(tensor.shape)):
                    raise SparsifinerError(f"input {name} of shape {tuple(tensor.shape)} is outside the engine's "
                                           f"profile {self.sidecar.get('profile')}: use a batch in that range")
                self.context.set_tensor_address(name, tensor.data_ptr())
                keep.append(tensor)
            outputs = {}
            for name in names:
                if name in inputs:
                    continue
                shape = tuple(self.context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=self._torch_dtype(name), device=f"cuda:{self.device}")
                self.context.set_tensor_address(name, outputs[name].data_ptr())
            self.stream.wait_stream(torch.cuda.current_stream())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                why = self.logger.errors[-1] if self.logger.errors else "no details"
                raise SparsifinerError(f"TensorRT could not run {self.engine_path.name}: {why}")
            self.stream.synchronize()
        return {name: tensor.float().cpu().numpy() for name, tensor in outputs.items()}
