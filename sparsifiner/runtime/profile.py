"""Latency, throughput and memory of deployed models, side by side: ``sparsifiner profile``.

A *target* is one model in one backend, named by a spec ``PATH[@OPTION,...]``:

* ``model.onnx`` in ONNX Runtime; options: ``cpu`` (default) or ``cuda`` (the CUDA EP,
  needs onnxruntime-gpu), and the op backend: any other word is passed through to
  ``runtime.ort.create_session`` ("function", "extensions", and whatever it gains later,
  e.g. "native"); ``torch`` or ``compile`` run the PyTorch model the file was exported from.
* ``model.safetensors``: the checkpoint in PyTorch, ``eager`` (default) or ``compile``.
* ``model.engine``: a TensorRT engine on the GPU, with CUDA graphs (``graph``, default) or
  without (``nograph``); per-layer times come from a separate IProfiler pass.

Measurement (``run_profile``): per batch size, every target is loaded and warmed up, then
the targets run *interleaved*: each round runs each target once, the round's order rotated,
until ``duration`` seconds have passed and at least ``iterations`` rounds ran. Load
changes on a shared machine then hit every target alike, and the ratio of two targets is
taken round by round (paired), so its spread is reported too. Latency is host wall time
around one synchronous inference; engines also report GPU time from CUDA events.
Statistics: p50/p90/p95/p99, mean, coefficient of variation, throughput (images/s =
batch / mean latency), peak host memory (the process's peak RSS during the target's
inferences, reset before each one) and device memory where there is a device.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from sparsifiner.errors import SparsifinerError

REPORT_FORMAT = "sparsifiner-profile/1"
PERCENTILES = (50, 90, 95, 99)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass(frozen=True)
class Target:
    """One model in one backend (see the module docstring for the spec syntax)."""

    spec: str
    path: str
    kind: str  # "onnx", "torch" or "engine"
    op_backend: Optional[str] = None  # onnx: passed to create_session
    provider: str = "cpu"  # onnx: cpu or cuda
    compile: bool = False  # torch
    cuda_graph: bool = True  # engine
    from_onnx: bool = False  # torch: the model an ONNX file was exported from

    @property
    def backend(self) -> str:
        if self.kind == "onnx":
            return f"onnxruntime {self.provider} ({self.op_backend})"
        if self.kind == "torch":
            return "pytorch " + ("compile" if self.compile else "eager")
        return "tensorrt" + (" cuda graph" if self.cuda_graph else "")

    @property
    def label(self) -> str:
        return f"{Path(self.path).name} [{self.backend}]"


def parse_target(spec: str, default_op_backend: str = "function") -> Target:
    """A Target from ``PATH[@OPTION,...]``; one-line errors for missing files and unknown options."""
    path, options = spec, []
    if "@" in spec and not Path(spec).exists():
        path, _, rest = spec.rpartition("@")
        options = [o.strip().lower() for o in rest.split(",") if o.strip()]
    file = Path(path)
    if not file.is_file():
        raise SparsifinerError(f"profile target not found: {path}")
    suffix = file.suffix.lower()
    with open(file, "rb") as f:
        magic = f.read(4)
    if suffix in ENGINE_SUFFIXES or magic in (b"ftrt", b"vtrt"):
        unknown = [o for o in options if o not in ("graph", "nograph")]
        if unknown:
            raise SparsifinerError(f"unknown engine option {unknown[0]!r} in {spec}: use graph or nograph")
        return Target(spec, path, "engine", cuda_graph="nograph" not in options)
    if suffix == ".safetensors":
        unknown = [o for o in options if o not in ("eager", "compile")]
        if unknown:
            raise SparsifinerError(f"unknown PyTorch option {unknown[0]!r} in {spec}: use eager or compile")
        return Target(spec, path, "torch", compile="compile" in options)
    if suffix != ".onnx":
        raise SparsifinerError(f"cannot profile {path}: give an .onnx file, a .safetensors checkpoint or an engine")
    if "torch" in options or "compile" in options:
        unknown = [o for o in options if o not in ("torch", "compile", "eager")]
        if unknown:
            raise SparsifinerError(f"option {unknown[0]!r} does not apply to PyTorch in {spec}")
        return Target(spec, path, "torch", compile="compile" in options, from_onnx=True)
    providers = [o for o in options if o in ("cpu", "cuda")]
    backends = [o for o in options if o not in ("cpu", "cuda")]
    if len(providers) > 1 or len(backends) > 1:
        raise SparsifinerError(f"{spec}: give at most one provider (cpu, cuda) and one op backend")
    return Target(spec, path, "onnx", op_backend=backends[0] if backends else default_op_backend,
                  provider=providers[0] if providers else "cpu")


@dataclass(frozen=True)
class ProfileSettings:
    """What ``sparsifiner profile`` measures.

    targets: specs (see parse_target); several are measured interleaved, ratios to the first.
    batches: batch sizes. warmup_ms: warm-up per target and batch (at least one run).
    duration: seconds of interleaved measurement per batch size; iterations: at least this
        many rounds. layer_iterations: IProfiler runs per engine and batch (0: none).
    threads: intra-op threads of ONNX Runtime and torch (None: their defaults).
    device: torch device of PyTorch targets (None: cpu). inputs/seed: what the images are
        ("random", "demo" or a folder; see sparsifiner.data.feeds).
    """

    targets: tuple
    batches: tuple = (1,)
    warmup_ms: float = 200.0
    duration: float = 3.0
    iterations: int = 10
    layer_iterations: int = 20
    threads: Optional[int] = None
    device: Optional[str] = None
    default_op_backend: str = "function"
    inputs: str = "random"
    seed: int = 0

    def __post_init__(self):
        if not self.targets:
            raise SparsifinerError("give a model to profile (an .onnx file, a checkpoint or an engine)")
        if not self.batches or any(b < 1 for b in self.batches):
            raise SparsifinerError(f"--batch takes sizes >= 1, got {list(self.batches)}")
        if self.iterations < 1:
            raise SparsifinerError(f"--iterations must be >= 1, got {self.iterations}")
        if self.duration < 0 or self.warmup_ms < 0 or self.layer_iterations < 0:
            raise SparsifinerError("--duration, --warmup and --layer-iterations must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise SparsifinerError(f"--threads must be >= 1, got {self.threads}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_batches(text: str) -> tuple:
    try:
        return tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise SparsifinerError(f"--batch takes comma-separated integers, got {text!r}") from None


def latency_stats(samples_ms, batch: int) -> dict:
    """p50/p90/p95/p99, mean, std, cv, min, max (ms) and throughput (images/s) of one target at one batch."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples")
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    stats = {f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES}
    stats.update(mean=mean, std=std, cv=std / mean if mean > 0 else 0.0, min=float(a.min()), max=float(a.max()),
                 n=int(a.size), throughput=batch * 1000.0 / mean if mean > 0 else 0.0)
    return stats


def paired_ratio(samples_ms, reference_ms) -> dict:
    """Round-by-round latency ratios (target / reference): median and 10th/90th percentiles."""
    a, b = np.asarray(samples_ms, dtype=np.float64), np.asarray(reference_ms, dtype=np.float64)
    n = min(a.size, b.size)
    ratios = a[:n] / b[:n]
    return {"median": float(np.median(ratios)), "p10": float(np.percentile(ratios, 10)),
            "p90": float(np.percentile(ratios, 90)), "p50_ratio": float(np.median(a) / np.median(b)), "rounds": int(n)}


class HostMemory:
    """Peak resident memory around a call: /proc/self/status VmHWM, reset through clear_refs ("5").
    Where the reset is not allowed, the process's lifetime peak (getrusage) is all there is."""

    def __init__(self):
        self.resettable = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = self._status("VmHWM") is not None
        except OSError:
            pass

    @staticmethod
    def _status(key: str) -> Optional[float]:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024.0  # kB -> MiB
        except OSError:
            return None
        return None

    def rss(self) -> Optional[float]:
        return self._status("VmRSS")

    def reset(self) -> None:
        if self.resettable:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak(self) -> Optional[float]:
        if self.resettable:
            return self._status("VmHWM")
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def system_state() -> dict:
    """Load average and CPU count: how busy the machine was (timings on a shared machine move with it)."""
    import platform

    load = os.getloadavg() if hasattr(os, "getloadavg") else (None,) * 3
    return {"load_1m": load[0], "load_5m": load[1], "load_15m": load[2], "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "platform": platform.platform(),
            "python": platform.python_version()}


def _versions() -> dict:
    import importlib.metadata as md

    found = {}
    for name in ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt_rtx_cu13_bindings"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return found


def measure(targets: list, runs: dict, settings: ProfileSettings, clock=time.perf_counter, memory=None) -> dict:
    """Interleaved rounds over prepared runs ({target label: callable returning GPU ms or None}).

    Returns {label: {"host_ms": [...], "gpu_ms": [...], "host_peak_mib", "host_infer_mib", "host_warmup_mib"}}:
    the process's peak RSS while the target ran, the most one run rose above the RSS before it,
    and what the warm-up added to the RSS for good (ONNX Runtime's arena grows on the first run).
    """
    memory = memory or HostMemory()
    labels = [t for t in targets if t in runs]
    out = {label: {"host_ms": [], "gpu_ms": [], "host_peak_mib": None, "host_infer_mib": None, "host_warmup_mib": None}
           for label in labels}
    for label in labels:  # warm-up, one target at a time; what it adds to the RSS stays (arenas, caches)
        before = memory.rss()
        start = clock()
        runs[label]()
        while (clock() - start) * 1000.0 < settings.warmup_ms:
            runs[label]()
        after = memory.rss()
        if before is not None and after is not None:
            out[label]["host_warmup_mib"] = max(0.0, after - before)
    start, rounds = clock(), 0
    while rounds < settings.iterations or clock() - start < settings.duration:
        shift = rounds % len(labels)
        for label in labels[shift:] + labels[:shift]:
            before = memory.rss()
            memory.reset()
            t0 = clock()
            gpu = runs[label]()
            elapsed = (clock() - t0) * 1000.0
            peak = memory.peak()
            record = out[label]
            record["host_ms"].append(elapsed)
            if gpu is not None:
                record["gpu_ms"].append(gpu)
            if peak is not None:
                record["host_peak_mib"] = max(record["host_peak_mib"] or 0.0, peak)
                if before is not None and memory.resettable:
                    record["host_infer_mib"] = max(record["host_infer_mib"] or 0.0, peak - before)
        rounds += 1
    return out


def run_profile(settings: ProfileSettings, progress=None) -> dict:
    """Load every target, measure each batch size interleaved, and return the report (see profile_report)."""
    from sparsifiner.runtime.profile_targets import load_target

    say = progress or (lambda text: None)
    targets = [parse_target(spec, settings.default_op_backend) for spec in settings.targets]
    labels = _unique_labels(targets)
    state_before = system_state()
    memory = HostMemory()
    loaded, failures = {}, {}
    for target, label in zip(targets, labels):
        say(f"loading {label}")
        rss = memory.rss()
        try:
            loaded[label] = load_target(target, settings)
        except SparsifinerError:
            raise
        except Exception as exc:  # torch.compile and friends: a failed target is reported, the others go on
            failures[label] = _one_line(exc)
            continue
        after = memory.rss()
        loaded[label].details["host_load_mib"] = None if rss is None or after is None else round(after - rss, 1)
    results, layers = [], []
    for batch in settings.batches:
        runs = {}
        for label in list(loaded):
            try:
                loaded[label].check_batch(batch)
                say(f"preparing {label} at batch {batch}")
                runs[label] = loaded[label].prepare(batch, settings)
            except SparsifinerError:
                raise
            except Exception as exc:
                failures[f"{label} @ batch {batch}"] = _one_line(exc)
        if not runs:
            continue
        say(f"measuring batch {batch}: {len(runs)} targets interleaved")
        measured = measure([l for l in labels if l in runs], runs, settings, memory=memory)
        for label in [l for l in labels if l in runs]:
            record = measured[label]
            target = loaded[label]
            row = {"target": label, "spec": target.target.spec, "batch": batch,
                   "input_shape": [batch, *target.image_shape], "latency_ms": latency_stats(record["host_ms"], batch),
                   "gpu_ms": latency_stats(record["gpu_ms"], batch) if record["gpu_ms"] else None,
                   "memory": {"host_peak_mib": _round(record["host_peak_mib"]),
                              "host_infer_mib": _round(record["host_infer_mib"]),
                              "host_warmup_mib": _round(record["host_warmup_mib"]),
                              "host_load_mib": target.details.get("host_load_mib"), **target.device_memory()},
                   "samples_ms": [round(v, 4) for v in record["host_ms"]]}
            results.append(row)
            if settings.layer_iterations and hasattr(target, "layer_times"):
                say(f"per-layer times of {label} at batch {batch}")
                layers.append({"target": label, "batch": batch, **target.layer_times(batch, settings.layer_iterations)})
        for label in runs:
            loaded[label].release(batch)
    if not results:
        first = next(iter(failures.values()), "nothing ran")
        raise SparsifinerError(f"no target could be measured: {first}")
    _add_ratios(results)
    return {
        "format": REPORT_FORMAT,
        "settings": settings.to_dict(),
        "targets": [{"label": label, "spec": t.spec, "path": str(Path(t.path).resolve()), "kind": t.kind,
                     "backend": t.backend, **(loaded[label].details if label in loaded else {}),
                     "status": "ok" if label in loaded else "failed", "error": failures.get(label)}
                    for t, label in zip(targets, labels)],
        "failures": failures,
        "results": results,
        "layers": layers,
        "system": {"before": state_before, "after": system_state(), "memory_peak_resettable": memory.resettable,
                   "versions": _versions()},
    }


def _add_ratios(results: list) -> None:
    """Each row's paired ratio to the first target of the same input shape and batch."""
    first: dict = {}
    for row in results:
        key = tuple(row["input_shape"])
        ref = first.setdefault(key, row)
        row["reference"] = ref["target"]
        row["ratio"] = paired_ratio(row["samples_ms"], ref["samples_ms"]) if ref is not row else None


def _unique_labels(targets) -> list:
    labels, seen = [], {}
    for t in targets:
        label = t.label
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return labels


def _round(value) -> Optional[float]:
    return None if value is None else round(float(value), 1)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
