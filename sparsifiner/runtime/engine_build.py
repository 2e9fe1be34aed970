"""Build a TensorRT engine from an exported ONNX graph: ``sparsifiner build-engine``.

``build_engine_file(EngineBuildSettings(...))`` checks the request, builds the plugin
library on demand (``runtime.plugin_build``), runs the build in a child process and writes
the engine atomically with its JSON sidecar (``runtime.engine_file``). The child
(``python -m sparsifiner.runtime.engine_build``) runs ``runtime.engine_network`` with the
TensorRT-RTX loader fix on LD_LIBRARY_PATH (see ``runtime.trt_loader``): the ONNX parser
may abort the process otherwise, and a crash in the builder becomes a one-line error
instead of taking the caller down. The child reports progress as events on stderr, which
the parent draws (one updating line on a terminal, phase lines otherwise).

Backends: TensorRT when installed, else TensorRT-RTX (``backend="auto"``), or either by
name. TensorRT-RTX builds ahead of time without a GPU for a named compute capability;
it has no sm90 target and its timing cache needs a GPU.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

from sparsifiner import op_spec
from sparsifiner.errors import SparsifinerError

_EVENT = "@@sparsifiner-build "
_PLUGIN_ERROR = "[sparsifiner plugin] error: "  # what topkMaskedAttentionPluginLibrary.cpp prints without a logger
DEFAULT_BATCH = (1, 4, 8)


@dataclass(frozen=True)
class EngineBuildSettings:
    """What ``sparsifiner build-engine`` builds.

    min_batch/opt_batch/max_batch: the optimization profile of a dynamic batch (default
        1/4/8, opt clipped into range); a fixed-batch graph takes none.
    workspace_mib: the builder's workspace pool limit; timing_cache: a file read before and
        written after the build; optimization_level: 0-5 (TensorRT's default 3).
    compute_capability: TensorRT-RTX target such as "sm86" (needed without a GPU).
    plugin_library: the TopKMaskedAttention plugin (default: built on demand, cached).
    use_plugin: False builds custom nodes from their local function (standard ops).
    tf32: allow TF32 math in fp32 graphs (off: the engine computes in fp32 as the graph says).
    """

    onnx_path: str
    engine_path: Optional[str] = None
    backend: str = "auto"
    min_batch: Optional[int] = None
    opt_batch: Optional[int] = None
    max_batch: Optional[int] = None
    workspace_mib: Optional[int] = None
    timing_cache: Optional[str] = None
    optimization_level: Optional[int] = None
    compute_capability: Optional[str] = None
    plugin_library: Optional[str] = None
    use_plugin: bool = True
    tf32: bool = False
    progress: bool = False

    def __post_init__(self):
        if self.backend not in ("auto", "trt", "rtx"):
            raise SparsifinerError(f"--backend must be auto, trt or rtx; got {self.backend!r}")
        for name in ("min_batch", "opt_batch", "max_batch", "workspace_mib"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SparsifinerError(f"--{name.replace('_batch', '').replace('_mib', '')} must be >= 1, got {value}")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise SparsifinerError(f"--builder-optimization-level must be in 0..5, got {self.optimization_level}")
        self.batch_range()

    def batch_range(self) -> tuple:
        low = self.min_batch or DEFAULT_BATCH[0]
        high = self.max_batch or max(DEFAULT_BATCH[2], low)
        opt = self.opt_batch or min(max(DEFAULT_BATCH[1], low), high)
        if not low <= opt <= high:
            raise SparsifinerError(f"the batch profile needs min <= opt <= max; got {low} / {opt} / {high}")
        return low, opt, high

    def destination(self) -> Path:
        return Path(self.engine_path) if self.engine_path else Path(self.onnx_path).with_suffix(".engine")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ProgressDisplay:
    """Draws the child's progress events: one updating line on a terminal, phase lines otherwise."""

    def __init__(self, stream: Optional[TextIO] = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.phases: dict = {}
        self.start = time.perf_counter()

    def __call__(self, event: dict) -> None:
        kind, phase = event["kind"], event.get("phase")
        if kind == "note":
            self._line(event["text"], final=True)
        elif kind == "start":
            self.phases[phase] = [0, event.get("steps") or 0]
            if not self.tty and event.get("parent") in (None, "Building engine"):
                self._line(str(phase), final=True)
        elif kind == "step" and phase in self.phases:
            self.phases[phase][0] = event["step"] + 1
        elif kind == "finish":
            self.phases.pop(phase, None)
        if self.tty and kind in ("start", "step", "finish"):
            path = " > ".join(f"{name} {done}/{steps}" for name, (done, steps) in self.phases.items())
            self._line(path[-110:])

    def _line(self, text: str, final: bool = False) -> None:
        elapsed = f"[{time.perf_counter() - self.start:5.0f} s] "
        if self.tty:
            self.stream.write("\r\x1b[K" + elapsed + text + ("\n" if final else ""))
        else:
            self.stream.write(elapsed + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _check_request(settings: EngineBuildSettings) -> tuple:
    """Checks that need no build: files, backend, target, timing cache. Returns (trt module, onnx model)."""
    import onnx

    from sparsifiner.runtime.engine_network import check_nodes, resolve_target
    from sparsifiner.runtime.trt_loader import gpu_visible, import_backend, is_rtx

    path = Path(settings.onnx_path)
    if not path.is_file():
        raise SparsifinerError(f"ONNX file not found: {path}")
    dest = settings.destination()
    if dest.is_dir() or not dest.parent.is_dir():
        raise SparsifinerError(f"cannot write the engine to {dest}: name a file in an existing folder")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise SparsifinerError(f"{path} is not a readable ONNX file (corrupt or truncated): export it again") from exc
    trt = import_backend(settings.backend)
    if settings.timing_cache and is_rtx(trt) and not gpu_visible():
        raise SparsifinerError("--timing-cache needs a GPU with TensorRT-RTX (its timing cache queries the local GPU "
                               "even in an ahead-of-time build): drop it on a CPU-only machine")
    target = resolve_target(trt, settings.compute_capability)
    if qdq_precision(model) == "fp8" and target.startswith("sm") and int(target[2:4]) < 89:
        raise SparsifinerError(f"{path.name} has fp8 Q/DQ, which needs sm89 or later (Ada, Hopper, Blackwell): "
                               "build for --compute-capability sm89, sm120 or sm121")
    check_nodes(model, path.name, settings.use_plugin)
    return trt, model


def qdq_precision(model) -> Optional[str]:
    """"int8" or "fp8" for a graph with explicit quantisation (read from its QuantizeLinear
    zero points, as ``sparsifiner calibrate`` writes them), else None."""
    import onnx

    inits = {init.name: init.data_type for init in model.graph.initializer}
    kinds = {inits.get(n.input[2]) for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    if onnx.TensorProto.FLOAT8E4M3FN in kinds:
        return "fp8"
    return "int8" if onnx.TensorProto.INT8 in kinds or onnx.TensorProto.UINT8 in kinds else None


def _plugin_library(settings: EngineBuildSettings, model, report) -> Optional[str]:
    from sparsifiner.runtime.engine_network import custom_nodes

    if not settings.use_plugin or not custom_nodes(model):
        return None
    if settings.plugin_library:
        if not Path(settings.plugin_library).is_file():
            raise SparsifinerError(f"plugin library not found: {settings.plugin_library}")
        return str(Path(settings.plugin_library).resolve())
    from sparsifiner.runtime.plugin_build import PluginBuildSettings, build_plugin

    return build_plugin(PluginBuildSettings(), progress=lambda text: report({"kind": "note", "text": text}))["path"]


def run_build(settings: EngineBuildSettings, plugin_library: Optional[str], report=None) -> tuple[bytes, dict]:
    """The build in a child process; returns (engine bytes, build info); errors as SparsifinerError."""
    from sparsifiner.runtime.trt_loader import loader_env

    with tempfile.TemporaryDirectory(prefix="sparsifiner-build-") as tmp:
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps({"settings": settings.to_dict(), "plugin_library": plugin_library,
                                       "engine": str(Path(tmp) / "model.engine"), "result": str(Path(tmp) / "result.json")}))
        child = subprocess.Popen([sys.executable, "-m", "sparsifiner.runtime.engine_build", str(request)],
                                 env=loader_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        other: list = []
        try:
            assert child.stderr is not None
            for line in child.stderr:
                if line.startswith(_EVENT):
                    if report is not None:
                        report(json.loads(line[len(_EVENT):]))
                elif line.strip():
                    other.append(line.strip())
            child.wait()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        result_path = Path(tmp) / "result.json"
        if not result_path.is_file():
            why = other[-1] if other else "no output"
            raise SparsifinerError(f"the TensorRT builder process crashed (exit {child.returncode}): {why}")
        result = json.loads(result_path.read_text())
        if "error" in result:
            # The plugin's own message names the layer and the reason; TensorRT-RTX 1.7 hands the
            # library no logger, so it arrives on the child's stderr.
            ours = [l.split(_PLUGIN_ERROR, 1)[1] for l in other if _PLUGIN_ERROR in l]
            what = result["error"]
            raise SparsifinerError(f"{what.split(': ', 1)[0]}: {ours[0]}" if ours and ": " in what else what)
        return (Path(tmp) / "model.engine").read_bytes(), result["info"]


def build_engine_file(settings: EngineBuildSettings, display: Optional[ProgressDisplay] = None) -> dict:
    """Check, build (in a child process), write engine + sidecar; returns the sidecar."""
    from sparsifiner.runtime.engine_file import write_engine
    from sparsifiner.runtime.plugin_build import file_sha256

    start = time.perf_counter()
    _, model = _check_request(settings)
    try:
        plugin = _plugin_library(settings, model, display or (lambda event: None))
        engine, info = run_build(settings, plugin, display)
    finally:
        if display is not None:
            display.close()
    if info.get("plugin"):
        info["plugin"]["sha256"] = file_sha256(info["plugin"]["library"])
    meta = {p.key: p.value for p in model.metadata_props}
    sidecar = dict(info, onnx={"path": str(Path(settings.onnx_path).resolve()), "sha256": file_sha256(settings.onnx_path),
                               "attention": meta.get("sparsifiner.attention"),
                               "dtype": meta.get("sparsifiner.dtype", "").strip('"') or None,
                               "qdq": qdq_precision(model),
                               "op": f"{op_spec.OP_DOMAIN}::{op_spec.OP_NAME}@{op_spec.OP_VERSION}"},
                   settings=settings.to_dict(), seconds=round(time.perf_counter() - start, 2))
    write_engine(settings.destination(), engine, sidecar)
    from sparsifiner.runtime.engine_file import read_sidecar

    return read_sidecar(settings.destination())


def _main(argv=None) -> int:
    """Child process: build per the request file, write engine and result JSON."""
    from sparsifiner.runtime.engine_network import build_serialized_engine

    request = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    settings = EngineBuildSettings(**request["settings"])

    def events(kind, **fields):
        sys.stderr.write(_EVENT + json.dumps({"kind": kind, **fields}) + "\n")
        sys.stderr.flush()

    try:
        engine, info = build_serialized_engine(settings, request["plugin_library"], events)
    except SparsifinerError as exc:
        Path(request["result"]).write_text(json.dumps({"error": str(exc)}))
        return 2
    Path(request["engine"]).write_bytes(engine)
    Path(request["result"]).write_text(json.dumps({"info": info}))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
