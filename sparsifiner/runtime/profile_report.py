"""What ``sparsifiner profile`` writes: the table, per-layer reports, trtexec's profile JSON, the PNG.

* ``format_profile(report)``: the human table (one row per target and batch; paired ratio
  to the first target of the same input shape, with its 10th-90th percentile spread).
* ``layer_report(times, iterations, sidecar)``: per-layer statistics of an engine from an
  IProfiler's ``{layer: [ms, ...]}``, each layer labelled: ``plugin`` (a TopKMaskedAttention
  layer, matched with the sidecar's plugin layer names), ``fused`` (a Myelin kernel
  ``__myl_<Op><Op>...`` with its ops decoded, or a TensorRT fusion ``a + b``/``{ForeignNode[a...b]}``
  with its nodes), ``sync`` (Myelin's events and shape calls), else the build's layer type.
  Works on synthetic timings, so it is tested without a GPU.
* ``trtexec_profile(layers)``: trtexec's ``--exportProfile`` records, ``[{"count": n},
  {"name", "timeMs", "averageMs", "medianMs", "percentage"}, ...]``: exactly those keys,
  since TensorRT's trex keeps only records of 4 or 5 keys.
* ``write_outputs(report, prefix)``: PREFIX.json (the report), PREFIX.png (latency
  distributions and per-layer bars), PREFIX.<n>.profile.json per engine and batch, and
  PREFIX.<n>.layers.json (the engine inspector's layer information, where available).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

_MYELIN_SUFFIX = re.compile(r"_myl\d+_\d+$")
# Myelin names fused kernels after the first letters of their ops.
_MYELIN_OPS = {"Mul": "Mul", "Add": "Add", "Sub": "Sub", "Div": "Div", "Resh": "Reshape", "Tran": "Transpose",
               "Conc": "Concat", "Slic": "Slice", "Mean": "ReduceMean", "Sqrt": "Sqrt", "Erf": "Erf", "Exp": "Exp",
               "Sum": "ReduceSum", "Maxr": "ReduceMax", "Min": "Min", "Max": "Max", "Roun": "Round", "Cast": "Cast",
               "Gtr": "Greater", "Sele": "Where", "Move": "Copy", "Repl": "Broadcast", "Tanh": "Tanh",
               "Soft": "Softmax", "Gath": "Gather", "Wher": "Where", "Pow": "Pow", "Neg": "Neg"}


def decode_myelin_ops(text: str) -> list:
    return [_MYELIN_OPS.get(token, token) for token in re.findall(r"[A-Z][a-z0-9]*", text)]


def label_layer(name: str, plugin_names=(), layer_types: Optional[dict] = None) -> dict:
    """{"category", "ops", "nodes"} of one engine layer name (see the module docstring)."""
    layer_types = layer_types or {}
    base = _MYELIN_SUFFIX.sub("", name)
    kind = layer_types.get(name)
    if any(base == p or name.startswith(p + "_myl") or name == p for p in plugin_names) or kind == "custom_layer":
        return {"category": "plugin", "ops": ["TopKMaskedAttention"], "nodes": [base]}
    if base.startswith("__myl_"):
        return {"category": "fused", "ops": decode_myelin_ops(base[len("__myl_"):]), "nodes": []}
    if base.startswith("__mye"):
        return {"category": "sync", "ops": [], "nodes": []}
    if name.startswith("{ForeignNode[") and name.endswith("]}"):
        return {"category": "fused", "ops": [], "nodes": [n for n in name[len("{ForeignNode["):-2].split("...") if n]}
    if " + " in name:
        return {"category": "fused", "ops": [], "nodes": [n.strip() for n in name.split(" + ")]}
    if "reformat" in name.lower() or kind == "reformat":
        return {"category": "reformat", "ops": [], "nodes": []}
    return {"category": kind or "layer", "ops": [], "nodes": [base]}


def layer_report(times: dict, iterations: int, sidecar: Optional[dict] = None, layer_info=None) -> dict:
    """Per-layer statistics and labels from {layer name: [ms per launch, ...]} (IProfiler order kept)."""
    layers = (sidecar or {}).get("layers") or {}
    plugin_names = tuple(layers.get("plugin") or ())
    types = {l["name"]: l.get("type") for l in layers.get("engine") or [] if isinstance(l, dict)}
    totals = {name: float(np.sum(ms)) for name, ms in times.items()}
    grand = sum(totals.values())
    rows = []
    for name, ms in times.items():
        label = label_layer(name, plugin_names, types)
        rows.append({"name": name, **label, "timeMs": totals[name], "averageMs": totals[name] / max(iterations, 1),
                     "medianMs": float(np.median(ms)), "percentage": 100.0 * totals[name] / grand if grand else 0.0,
                     "calls": len(ms)})
    by_category: dict = {}
    for row in rows:
        by_category[row["category"]] = by_category.get(row["category"], 0.0) + row["averageMs"]
    plugin_ms = by_category.get("plugin", 0.0)
    total_ms = sum(by_category.values())
    return {"iterations": iterations, "total_ms": total_ms, "plugin_ms": plugin_ms,
            "plugin_share": plugin_ms / total_ms if total_ms else 0.0,
            "plugin_layers": sum(r["category"] == "plugin" for r in rows),
            "fused_layers": sum(r["category"] == "fused" for r in rows),
            "by_category": by_category, "rows": rows, "layer_info": layer_info}


def trtexec_profile(layers: dict) -> list:
    """trtexec's --exportProfile records of one layer report (see the module docstring)."""
    keys = ("name", "timeMs", "averageMs", "medianMs", "percentage")
    return [{"count": int(layers["iterations"])}] + [{k: row[k] for k in keys} for row in layers["rows"]]


def _ratio_text(row: dict) -> str:
    ratio = row.get("ratio")
    if ratio is None:
        return "1 (ref)" if row.get("reference") == row["target"] else "-"
    return f"{ratio['median']:.2f}x ({ratio['p10']:.2f}-{ratio['p90']:.2f})"


def format_profile(report: dict) -> str:
    """The human table of a profile report."""
    before, after = report["system"]["before"], report["system"]["after"]
    settings = report["settings"]
    lines = [f"profile: {len(report['targets'])} target(s), interleaved; warm-up {settings['warmup_ms']:g} ms, "
             f"{settings['duration']:g} s and at least {settings['iterations']} rounds per batch size",
             f"machine: {before['cpus']} CPUs, load average {_load(before)} before, {_load(after)} after"]
    width = max([len(r["target"]) for r in report["results"]] + [6])
    head = (f"{'target':<{width}} {'batch':>5} {'p50 ms':>9} {'p90':>9} {'p95':>9} {'p99':>9} {'mean':>9} {'cv':>6} "
            f"{'img/s':>9} {'n':>4}  {'p50 vs ref (p10-p90)':<22} {'host MiB (+run)':>13}")
    lines += [head, "-" * len(head)]
    for row in report["results"]:
        s = row["latency_ms"]
        lines.append(f"{row['target']:<{width}} {row['batch']:>5} {s['p50']:>9.3f} {s['p90']:>9.3f} {s['p95']:>9.3f} "
                     f"{s['p99']:>9.3f} {s['mean']:>9.3f} {100 * s['cv']:>5.1f}% {s['throughput']:>9.3g} {s['n']:>4}  "
                     f"{_ratio_text(row):<22} {_memory_text(row['memory']):>13}")
        if row.get("gpu_ms"):
            g = row["gpu_ms"]
            mem = row["memory"]
            lines.append(f"{'  GPU time (CUDA events)':<{width}} {'':>5} {g['p50']:>9.3f} {g['p90']:>9.3f} {g['p95']:>9.3f} "
                         f"{g['p99']:>9.3f} {g['mean']:>9.3f}  device MiB: load {mem.get('device_load_mib')}, "
                         f"activations {mem.get('device_activation_mib')}, peak used {mem.get('device_used_peak_mib')}")
    refs = sorted({r["reference"] for r in report["results"] if r.get("ratio")})
    if refs:
        lines.append("ratios: latency / the reference's (first target of the same input shape), taken round by round: "
                     + "; ".join(refs))
    threads = settings.get("threads")
    lines.append(f"threads: {threads or 'each runtime its default'}; host MiB: the process's peak RSS while the target "
                 "ran (+ what its inference added: in the warm-up, or above the RSS before a run)")
    for layers in report.get("layers") or []:
        lines.append(f"layers of {layers['target']} at batch {layers['batch']}: {len(layers['rows'])} layers, "
                     f"{layers['total_ms']:.3f} ms per launch (profiler, no CUDA graph); plugin "
                     f"{layers['plugin_layers']} layers {layers['plugin_ms']:.3f} ms = {100 * layers['plugin_share']:.1f} %, "
                     f"fused kernels {layers['fused_layers']}")
        for row in sorted(layers["rows"], key=lambda r: -r["averageMs"])[:8]:
            what = ", ".join(row["ops"][:6]) or ", ".join(row["nodes"][:3])
            lines.append(f"    {row['averageMs']:8.4f} ms {row['percentage']:5.1f} %  {row['category']:<8} {row['name'][:60]}"
                         + (f"  ({what})" if what and row["category"] != "plugin" else ""))
    for what, why in (report.get("failures") or {}).items():
        lines.append(f"FAILED {what}: {why}")
    return "\n".join(lines)


def _memory_text(memory: dict) -> str:
    """Peak RSS of the process while the target ran (+ what its inference added: in the warm-up, for good,
    or above the RSS before a run, whichever is more)."""
    peak = memory.get("host_peak_mib")
    if peak is None:
        return "-"
    added = [v for v in (memory.get("host_infer_mib"), memory.get("host_warmup_mib")) if v is not None]
    return f"{peak:.0f}" + (f" (+{max(added):.0f})" if added else "")


def _load(state: dict) -> str:
    return "-" if state.get("load_1m") is None else f"{state['load_1m']:.1f}"


def plot_profile(report: dict, path) -> None:
    """PNG: latency distribution per target and batch; per-layer bars of each engine (top 15)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsifiner.artifacts import atomic_write

    layers = report.get("layers") or []
    fig, axes = plt.subplots(1 + len(layers), 1, figsize=(11, 4.5 + 4 * len(layers)), squeeze=False)
    ax = axes[0][0]
    rows = report["results"][::-1]  # the first target on top
    data = [r["samples_ms"] for r in rows]
    names = [f"{r['target']}\nbatch {r['batch']}" for r in rows]
    major, minor = (int(v) for v in matplotlib.__version__.split(".")[:2])
    horizontal = {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}
    ax.boxplot(data, showfliers=False, whis=(5, 95), **horizontal)
    for i, samples in enumerate(data, start=1):
        jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(samples))
        ax.plot(samples, i + jitter, ".", alpha=0.4, markersize=3, color=f"C{i % 10}")
    ax.set_yticks(range(1, len(names) + 1), names, fontsize=7)
    lows, highs = min(min(d) for d in data), max(max(d) for d in data)
    if highs > 10 * lows:
        ax.set_xscale("log")
    ax.set_xlabel("latency per inference (ms); box: quartiles, whiskers: p5-p95, dots: every run")
    ax.set_title(f"latency, interleaved (load average {_load(report['system']['before'])} before, "
                 f"{_load(report['system']['after'])} after, {report['system']['before']['cpus']} CPUs)", fontsize=9)
    colors = {"plugin": "tab:red", "fused": "tab:blue", "sync": "tab:gray", "reformat": "tab:orange"}
    for (axrow, layer) in zip(axes[1:], layers):
        ax = axrow[0]
        top = sorted(layer["rows"], key=lambda r: -r["averageMs"])[:15][::-1]
        ax.barh(range(len(top)), [r["averageMs"] for r in top],
                color=[colors.get(r["category"], "tab:green") for r in top])
        ax.set_yticks(range(len(top)), [f"{r['category']}: {r['name'][:48]}" for r in top], fontsize=7)
        ax.set_xlabel("ms per launch (IProfiler, no CUDA graph)")
        ax.set_title(f"{layer['target']} batch {layer['batch']}: plugin {100 * layer['plugin_share']:.1f} % "
                     f"of {layer['total_ms']:.3f} ms", fontsize=9)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def check_prefix(prefix) -> None:
    """Refuse an output prefix that cannot be written, before minutes of measuring."""
    import os

    from sparsifiner.errors import SparsifinerError

    folder = Path(prefix).parent
    if Path(prefix).is_dir():
        raise SparsifinerError(f"-o {prefix} is a folder: give a file prefix such as {Path(prefix) / 'profile'}")
    if not folder.is_dir():
        raise SparsifinerError(f"output folder {folder} does not exist: create it first")
    if not os.access(folder, os.W_OK):
        raise SparsifinerError(f"cannot write to {folder}: choose a writable output folder")


def write_outputs(report: dict, prefix, plot: bool = True) -> list:
    """Write PREFIX.png, the per-engine trtexec profiles and PREFIX.json (each atomically; all
    removed again when one fails); returns the paths written."""
    import json

    from sparsifiner.artifacts import atomic_write, write_json

    prefix = Path(prefix)
    written: list = []
    try:
        if plot:
            png = prefix.with_name(prefix.name + ".png")
            plot_profile(report, png)
            written.append(str(png))
        for i, layers in enumerate(report.get("layers") or []):
            path = prefix.with_name(f"{prefix.name}.{i}.profile.json")
            write_json(path, trtexec_profile(layers))
            layers["trtexec_profile"] = str(path)
            written.append(str(path))
            if layers.get("layer_info"):
                info_path = prefix.with_name(f"{prefix.name}.{i}.layers.json")
                data = layers.pop("layer_info")
                atomic_write(info_path, lambda tmp: Path(tmp).write_text(json.dumps(data)))
                layers["layer_info_file"] = str(info_path)
                written.append(str(info_path))
        report["files"] = [str(prefix.with_name(prefix.name + ".json"))] + written
        written.insert(0, str(write_json(prefix.with_name(prefix.name + ".json"), report)))
    except BaseException:
        for path in written:
            Path(path).unlink(missing_ok=True)
        raise
    return written
