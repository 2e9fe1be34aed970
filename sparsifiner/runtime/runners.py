"""Runners: each backend behind one interface, in the style of Polygraphy's backends.

A loader is a small callable that builds a thing on first use (``TorchModelLoader``,
``OrtSessionLoader``); a runner takes a dict of named arrays and returns one
(``TorchRunner``, ``OrtRunner``; the TensorRT runner lives in ``trt_runner``). ``run_all``
feeds the same inputs to several runners, interleaved batch by batch, and collects
their outputs and inference times. Runners know nothing about comparison
(``sparsifiner.runtime.compare``) or where feeds come from (``sparsifiner.data.feeds``).
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterable, Sequence

import numpy as np

from sparsifiner.artifacts import INPUT_NAME, OUTPUT_NAME
from sparsifiner.model.source import ModelSource

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class TorchModelLoader:
    """Callable returning the fp32 PyTorch model of a source and attention form."""

    def __init__(self, source: ModelSource, attention: str):
        self.source, self.attention = source, attention

    def __call__(self):
        from sparsifiner.model.source import load_model

        return load_model(self.source, self.attention)[0].float().eval()


class OrtSessionLoader:
    """Callable returning an ONNX Runtime session (op backend: see runtime.ort); ``extra_outputs``
    names intermediate tensors to return as well (the ops' coefficients, for validation)."""

    def __init__(self, path: str, op_backend: str = "function", extra_outputs: Sequence[str] = ()):
        self.path, self.op_backend, self.extra_outputs = path, op_backend, tuple(extra_outputs)

    def __call__(self):
        from sparsifiner.runtime.ort import create_session, load_model_proto, with_outputs

        if not self.extra_outputs:
            return create_session(self.path, self.op_backend)
        return create_session(with_outputs(load_model_proto(self.path), self.extra_outputs), self.op_backend)


class TorchRunner:
    """The PyTorch model on a feed. ``capture_coefficients`` adds each block's op coefficients
    to the outputs (named like the exported graph's tensors); a feed that carries such
    coefficients has them injected, so the model selects the keys they select.
    ``reference_op``: the op runs the eager reference (the spec) even where a native CPU
    kernel is loaded; validation wants the spec, profiling the fast path."""

    name = "pytorch"

    def __init__(self, loader, capture_coefficients: bool = False, reference_op: bool = False):
        self.loader, self.model, self.capture = loader, None, capture_coefficients
        self.reference_op = reference_op

    def activate(self) -> None:
        if self.model is None:
            self.model = self.loader()

    def infer(self, feed: dict) -> dict:
        import torch

        from sparsifiner.model.sparsify import COEF_SUFFIX, capture_coefficients, inject_coefficients

        self.activate()
        coefs = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in feed.items() if k.endswith(COEF_SUFFIX)}
        with contextlib.ExitStack() as stack, torch.inference_mode():
            if self.reference_op:
                from sparsifiner.ops.cpu_binding import reference_cpu_op

                stack.enter_context(reference_cpu_op())
            if coefs:
                stack.enter_context(inject_coefficients(self.model, coefs))
            captured = stack.enter_context(capture_coefficients(self.model)) if self.capture else {}
            out = self.model(torch.from_numpy(np.ascontiguousarray(feed[INPUT_NAME], dtype=np.float32)))
        return {OUTPUT_NAME: out.float().numpy(), **{k: v.float().numpy() for k, v in captured.items()}}


class OrtRunner:
    name = "onnxruntime"

    def __init__(self, loader):
        self.loader, self.session = loader, None

    def activate(self) -> None:
        if self.session is None:
            self.session = self.loader()

    def infer(self, feed: dict) -> dict:
        self.activate()
        inputs = {}
        for arg in self.session.get_inputs():
            inputs[arg.name] = np.ascontiguousarray(feed[arg.name], dtype=_NP_TYPES.get(arg.type, np.float32))
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, inputs)))


def run_all(runners: list, feeds: Iterable[dict]) -> dict:
    """{runner name: {output: concatenated array over all feeds}}, plus inference seconds."""
    for runner in runners:
        runner.activate()  # load models and sessions outside the timings
    results: dict = {r.name: {} for r in runners}
    seconds = {r.name: 0.0 for r in runners}
    for feed in feeds:
        for runner in runners:
            start = time.perf_counter()
            out = runner.infer(feed)
            seconds[runner.name] += time.perf_counter() - start
            for name, array in out.items():
                results[runner.name].setdefault(name, []).append(np.asarray(array))
    outputs = {r: {k: np.concatenate(v) for k, v in res.items()} for r, res in results.items()}
    return {"outputs": outputs, "seconds": seconds}
