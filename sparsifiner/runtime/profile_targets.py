"""Loaded profile targets: ONNX Runtime sessions and PyTorch models behind one small interface.

``load_target(target, settings)`` returns an object with

* ``image_shape`` (C, H, W) and ``details`` (what was loaded: providers, device, ...);
* ``check_batch(batch)``: a one-line error when the model cannot take that batch;
* ``prepare(batch, settings)``: inputs made once, returns a callable that runs one
  synchronous inference (and returns GPU milliseconds, or None);
* ``device_memory()`` and ``release(batch)``.

Engines live in ``runtime.profile_trt`` (GPU only). Inputs come from the feeds of
``sparsifiner.data.feeds``, preprocessed as the model's metadata says; the first batch is
reused for every run (latency does not depend on the pixel values: the kept keys per row
are a fixed budget).
"""
from __future__ import annotations

import numpy as np

from sparsifiner.artifacts import INPUT_NAME, read_metadata
from sparsifiner.errors import SparsifinerError


def first_feed(settings, preprocess: dict, batch: int) -> np.ndarray:
    from sparsifiner.data.feeds import build_feeds

    feeds = build_feeds(settings.inputs, preprocess, batch, 1, settings.seed)
    return next(iter(feeds))[INPUT_NAME]


class OrtTarget:
    """An ONNX file in ONNX Runtime (CPU, or the CUDA EP)."""

    def __init__(self, target, settings):
        import onnxruntime as ort

        from sparsifiner.runtime.ort import create_session

        meta = read_metadata(target.path)
        self.target, self.preprocess = target, meta["preprocess"]
        providers = ["CPUExecutionProvider"]
        if target.provider == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise SparsifinerError(f"{target.spec}: the CUDA execution provider needs onnxruntime-gpu "
                                       "(pip install 'sparsifiner[gpu]') and a GPU")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = create_session(target.path, target.op_backend, providers=tuple(providers),
                                      threads=settings.threads or 0)
        arg = self.session.get_inputs()[0]
        self.input_name = arg.name
        self.dtype = np.float16 if arg.type == "tensor(float16)" else np.float32
        size = self.preprocess.get("input_size")
        self.image_shape = tuple(size) if size else tuple(int(d) for d in arg.shape[1:])
        self.fixed_batch = arg.shape[0] if isinstance(arg.shape[0], int) else None
        self.details = {"providers": self.session.get_providers(), "op_backend": target.op_backend,
                        "attention": meta["sparsifiner"].get("attention"), "dtype": meta["sparsifiner"].get("dtype"),
                        "quantization": meta["sparsifiner"].get("quantization"),
                        "model": (meta["sparsifiner"].get("arch") or {}).get("model")}
        self.feeds: dict = {}

    def check_batch(self, batch: int) -> None:
        if self.fixed_batch is not None and batch != self.fixed_batch:
            raise SparsifinerError(f"{self.target.path} has a fixed batch of {self.fixed_batch}: "
                                   f"profile it with --batch {self.fixed_batch}")

    def prepare(self, batch: int, settings):
        feed = {self.input_name: np.ascontiguousarray(first_feed(settings, self.preprocess, batch), dtype=self.dtype)}
        self.feeds[batch] = feed
        session = self.session

        def run():
            session.run(None, feed)
            return None

        return run

    def device_memory(self) -> dict:
        return {}

    def release(self, batch: int) -> None:
        self.feeds.pop(batch, None)


class TorchTarget:
    """A checkpoint (or the model an ONNX file was exported from) in PyTorch, eager or compiled."""

    def __init__(self, target, settings):
        import torch

        self.target = target
        if target.from_onnx:
            from sparsifiner.model.source import ModelSource, load_model

            meta = read_metadata(target.path)
            info = meta["sparsifiner"]
            if "source" not in info:
                raise SparsifinerError(f"{target.path} has no Sparsifiner metadata: it does not say what to run in PyTorch")
            model = load_model(ModelSource.from_dict(info["source"]), info["attention"])[0]
            kind, self.preprocess = info["attention"], meta["preprocess"]
        else:
            from sparsifiner.data.folder import data_config_dict
            from sparsifiner.model.source import load_checkpoint

            model, kind = load_checkpoint(target.path)
            self.preprocess = data_config_dict(model)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.device = torch.device(settings.device or "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SparsifinerError("--device cuda: torch sees no CUDA GPU")
        self.model = model.float().eval().to(self.device)
        self.runner = torch.compile(self.model) if target.compile else self.model
        self.image_shape = tuple(self.preprocess["input_size"])
        self.details = {"device": str(self.device), "model_kind": kind, "compile": target.compile,
                        "torch_threads": torch.get_num_threads()}
        self.inputs: dict = {}

    def check_batch(self, batch: int) -> None:
        return None

    def prepare(self, batch: int, settings):
        import torch

        x = torch.from_numpy(first_feed(settings, self.preprocess, batch)).to(self.device)
        self.inputs[batch] = x
        runner, cuda = self.runner, self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

        def run():
            with torch.inference_mode():
                runner(x)
            if cuda:
                torch.cuda.synchronize(self.device)
            return None

        run()  # torch.compile compiles here; a failure is this target's, reported by run_profile
        return run

    def device_memory(self) -> dict:
        if self.device.type != "cuda":
            return {}
        import torch

        return {"device_peak_mib": round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)}

    def release(self, batch: int) -> None:
        self.inputs.pop(batch, None)


def load_target(target, settings):
    """The loaded target of a parsed spec (engines: runtime.profile_trt, needs a GPU)."""
    if target.kind == "onnx":
        return OrtTarget(target, settings)
    if target.kind == "torch":
        return TorchTarget(target, settings)
    from sparsifiner.runtime.profile_trt import EngineTarget

    return EngineTarget(target, settings)

