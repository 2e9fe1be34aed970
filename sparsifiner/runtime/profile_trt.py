"""A TensorRT engine as a profile target (GPU only): CUDA graphs, GPU time, per-layer times, memory.

Built on ``runtime.trt_runner.TrtRunner`` (engine checks, plugin loading, deserialisation)
and written against the ``tensorrt`` Python API that TensorRT-RTX shares:

* ``prepare(batch)`` allocates static device buffers for the batch (torch tensors), sets
  the input shape and tensor addresses once, runs once (TensorRT finishes deferred work on
  the first launch of a shape), then captures ``execute_async_v3`` in a CUDA graph on the
  runner's stream. A capture failure falls back to plain launches and is reported.
  Each run replays the graph (or launches), timed on the stream with CUDA events.
* ``layer_times(batch, n)``: n synchronous ``execute_v2`` runs without a graph (TensorRT's profiler
  cannot see inside a CUDA graph; trtexec's ``--separateProfileRun``) with an ``IProfiler`` attached;
  per-layer lists of milliseconds, labelled by ``profile_report.label_layers`` with the
  build sidecar's layer list (plugin layers, fused Myelin kernels).
* memory: device memory the load took (``cudaMemGetInfo`` before and after), the
  execution context's activation memory, peak device use while the target ran.
"""
from __future__ import annotations

from typing import Any

from sparsifiner.errors import SparsifinerError


def layer_profiler(trt):
    """An IProfiler collecting {layer name: [ms, ...]} in first-seen order."""

    class LayerTimes(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)
            self.times: dict = {}

        def report_layer_time(self, layer_name, ms):
            self.times.setdefault(str(layer_name), []).append(float(ms))

    return LayerTimes()


class EngineTarget:
    """An engine built by ``sparsifiner build-engine``, run on the local GPU."""

    def __init__(self, target, settings):
        import torch

        from sparsifiner.runtime.trt_runner import TrtRunner

        self.target = target
        if not torch.cuda.is_available():
            raise SparsifinerError(f"{target.spec}: running a TensorRT engine needs a CUDA GPU and torch sees none")
        free_before = torch.cuda.mem_get_info()[0]
        self.runner = TrtRunner(target.path)
        self.runner.activate()
        self.engine, self.context, self.trt = self.runner.engine, self.runner.context, self.runner.trt
        free_after = torch.cuda.mem_get_info()[0]
        sidecar = self.runner.sidecar
        first = sidecar["inputs"][0]
        self.input_name = first["name"]
        self.image_shape = tuple(first["shape"][1:])
        self.profile = sidecar.get("profile")
        self.fixed_batch = first["shape"][0] if first["shape"][0] > 0 else None
        self.preprocess = {"input_size": list(self.image_shape), "mean": (0.5,) * 3, "std": (0.5,) * 3}
        onnx_path = (sidecar.get("onnx") or {}).get("path")
        if onnx_path:
            try:
                from sparsifiner.artifacts import read_metadata

                self.preprocess = read_metadata(onnx_path)["preprocess"] or self.preprocess
            except SparsifinerError:
                pass  # the ONNX file moved: random inputs need only the shape
        self.sidecar = sidecar
        self.details = {"backend": sidecar["backend"], "target": sidecar.get("target"), "profile": self.profile,
                        "plugin_layers": len((sidecar.get("layers") or {}).get("plugin") or []),
                        "device": torch.cuda.get_device_name(), "cuda_graph": target.cuda_graph}
        self.load_mib = (free_before - free_after) / 2**20
        self.buffers: dict = {}
        self.graphs: dict = {}
        self.peak_used = 0

    def check_batch(self, batch: int) -> None:
        if self.fixed_batch is not None and batch != self.fixed_batch:
            raise SparsifinerError(f"{self.target.path} has a fixed batch of {self.fixed_batch}: use --batch {self.fixed_batch}")
        if self.profile and not self.profile["min"] <= batch <= self.profile["max"]:
            raise SparsifinerError(f"batch {batch} is outside {self.target.path}'s profile "
                                   f"{self.profile['min']}..{self.profile['max']}: rebuild with --min/--max")

    def _bind(self, batch: int, settings) -> None:
        import torch

        from sparsifiner.runtime.profile_targets import first_feed

        engine, context, trt = self.engine, self.context, self.trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        tensors = {}
        for name in names:
            if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                continue
            array = torch.from_numpy(first_feed(settings, self.preprocess, batch))
            tensors[name] = array.to(device="cuda", dtype=self.runner._torch_dtype(name)).contiguous()
            if not context.set_input_shape(name, tuple(tensors[name].shape)):
                raise SparsifinerError(f"batch {batch} does not fit {self.target.path}'s profile")
        for name in names:
            if name not in tensors:
                shape = tuple(context.get_tensor_shape(name))
                tensors[name] = torch.empty(shape, dtype=self.runner._torch_dtype(name), device="cuda")
        for name, tensor in tensors.items():
            context.set_tensor_address(name, tensor.data_ptr())
        self.buffers[batch] = tensors

    def _launch(self) -> None:
        if not self.context.execute_async_v3(self.runner.stream.cuda_stream):
            errors = self.runner.logger.errors
            raise SparsifinerError(f"TensorRT could not run {self.target.path}: {errors[-1] if errors else 'no details'}")

    def prepare(self, batch: int, settings):
        import torch

        self._bind(batch, settings)
        stream = self.runner.stream
        with torch.cuda.stream(stream):
            self._launch()
        stream.synchronize()
        graph = None
        if self.target.cuda_graph:
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    self._launch()
                self.details["cuda_graph"] = True
            except Exception as exc:  # noqa: BLE001 - some layers cannot be captured: time plain launches
                graph = None
                self.details["cuda_graph"] = f"capture failed, plain launches: {str(exc).splitlines()[0][:160]}"
        self.graphs[batch] = graph
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run():
            with torch.cuda.stream(stream):
                start.record(stream)
                graph.replay() if graph is not None else self._launch()
                end.record(stream)
            end.synchronize()
            free, total = torch.cuda.mem_get_info()
            self.peak_used = max(self.peak_used, total - free)
            return start.elapsed_time(end)

        return run

    def layer_times(self, batch: int, iterations: int) -> dict:
        """Per-layer times over ``iterations`` plain launches (see the module docstring), labelled."""
        from sparsifiner.runtime.profile_report import layer_report

        profiler = layer_profiler(self.trt)
        engine, tensors = self.engine, self.buffers[batch]
        bindings = [tensors[engine.get_tensor_name(i)].data_ptr() for i in range(engine.num_io_tensors)]
        self.context.profiler = profiler
        try:
            for _ in range(iterations):
                # execute_v2 is the call the profiler documentation of both TensorRT and TensorRT-RTX names
                if hasattr(self.context, "execute_v2"):
                    if not self.context.execute_v2(bindings):
                        raise SparsifinerError(f"TensorRT could not run {self.target.path} with the profiler attached")
                else:
                    self._launch()
                    self.runner.stream.synchronize()
                    if not getattr(self.context, "enqueue_emits_profile", True):
                        self.context.report_to_profiler()
        finally:
            self.context.profiler = None
        return layer_report(profiler.times, iterations, self.sidecar, self.layer_info())

    def layer_info(self) -> Any:
        """The engine inspector's JSON (trtexec --exportLayerInfo), when the engine was built with detailed verbosity."""
        import json

        try:
            inspector = self.engine.create_engine_inspector()
            inspector.execution_context = self.context
            return json.loads(inspector.get_engine_information(self.trt.LayerInformationFormat.JSON))
        except Exception:  # noqa: BLE001 - a report extra, not a reason to fail
            return None

    def device_memory(self) -> dict:
        size = getattr(self.engine, "device_memory_size_v2", None) or getattr(self.engine, "device_memory_size", 0)
        return {"device_load_mib": round(self.load_mib, 1), "device_activation_mib": round(size / 2**20, 1),
                "device_used_peak_mib": round(self.peak_used / 2**20, 1)}

    def release(self, batch: int) -> None:
        self.graphs.pop(batch, None)
        self.buffers.pop(batch, None)
