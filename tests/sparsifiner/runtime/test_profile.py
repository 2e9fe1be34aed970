"""``sparsifiner.runtime.profile``: target specs, statistics, the interleaved loop, a real run in ONNX Runtime."""
import json

import numpy as np
import pytest

from sparsifiner.errors import SparsifinerError
from sparsifiner.runtime.profile import (HostMemory, ProfileSettings, latency_stats, measure, paired_ratio,
                                         parse_batches, parse_target, run_profile)


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    from sparsifiner.export import ExportSettings, ModelSource, export_onnx

    path = tmp_path_factory.mktemp("profile") / "demo.onnx"
    export_onnx(ExportSettings(source=ModelSource(model_name="demo")), path)
    return path


def test_target_specs(tmp_path):
    onnx_file, ckpt, engine, plan = (tmp_path / n for n in ("m.onnx", "m.safetensors", "m.engine", "m.bin"))
    for f in (onnx_file, ckpt, engine):
        f.write_bytes(b"x")
    plan.write_bytes(b"vtrt....")  # an engine by its magic, whatever the name
    t = parse_target(str(onnx_file))
    assert (t.kind, t.provider, t.op_backend) == ("onnx", "cpu", "function")
    t = parse_target(f"{onnx_file}@native,cuda", default_op_backend="extensions")
    assert (t.kind, t.provider, t.op_backend) == ("onnx", "cuda", "native")  # passed through to create_session
    assert parse_target(str(onnx_file), "extensions").op_backend == "extensions"
    t = parse_target(f"{onnx_file}@torch,compile")
    assert (t.kind, t.compile, t.from_onnx) == ("torch", True, True)
    assert parse_target(f"{ckpt}@compile").compile and not parse_target(str(ckpt)).compile
    assert parse_target(str(engine)).cuda_graph and not parse_target(f"{engine}@nograph").cuda_graph
    assert parse_target(str(plan)).kind == "engine"
    assert parse_target(f"{onnx_file}@extensions").label == "m.onnx [onnxruntime cpu (extensions)]"


@pytest.mark.parametrize("spec,fragment", [
    ("absent.onnx", "profile target not found"),
    ("m.engine@fast", "unknown engine option 'fast'"),
    ("m.safetensors@native", "unknown PyTorch option"),
    ("m.onnx@cpu,cuda", "at most one provider"),
    ("m.onnx@torch,cuda", "does not apply to PyTorch"),
    ("m.txt", "cannot profile"),
])
def test_bad_specs(tmp_path, spec, fragment):
    for name in ("m.onnx", "m.engine", "m.safetensors", "m.txt"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(SparsifinerError, match=fragment):
        parse_target(str(tmp_path / spec))


def test_settings_and_batches():
    assert parse_batches("1, 8,32") == (1, 8, 32)
    with pytest.raises(SparsifinerError, match="comma-separated integers"):
        parse_batches("1,x")
    for bad in ({"targets": ()}, {"targets": ("a",), "batches": (0,)}, {"targets": ("a",), "iterations": 0},
                {"targets": ("a",), "duration": -1}, {"targets": ("a",), "threads": 0}):
        with pytest.raises(SparsifinerError):
            ProfileSettings(**bad)


def test_statistics():
    s = latency_stats([1.0, 2.0, 3.0, 4.0, 10.0], batch=4)
    assert s["p50"] == 3.0 and s["mean"] == 4.0 and s["min"] == 1.0 and s["max"] == 10.0 and s["n"] == 5
    assert s["p99"] == pytest.approx(np.percentile([1, 2, 3, 4, 10], 99))
    assert s["cv"] == pytest.approx(np.std([1, 2, 3, 4, 10], ddof=1) / 4.0)
    assert s["throughput"] == pytest.approx(1000.0)  # 4 images per 4 ms
    r = paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])
    assert r["median"] == 2.0 and r["rounds"] == 3 and r["p50_ratio"] == 2.0 and r["p90"] == pytest.approx(2.8)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_interleaving_rotates_and_stops_on_duration_and_iterations():
    clock, calls = FakeClock(), []

    def run(name, cost):
        def call():
            calls.append(name)
            clock.now += cost
            return 0.5 if name == "b" else None
        return call

    settings = ProfileSettings(targets=("a",), warmup_ms=0, duration=1.0, iterations=3)
    out = measure(["a", "b", "c"], {"a": run("a", 0.1), "b": run("b", 0.2), "c": run("c", 0.05)}, settings,
                  clock=clock)
    rounds = calls[3:]  # one warm-up run each first
    assert calls[:3] == ["a", "b", "c"]
    assert rounds[:9] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert len(rounds) % 3 == 0 and len(rounds) // 3 == 3  # 3 rounds of 0.35 s reach 1 s
    assert [len(out[k]["host_ms"]) for k in "abc"] == [3, 3, 3]
    assert out["a"]["host_ms"] == pytest.approx([100.0] * 3) and out["b"]["gpu_ms"] == [0.5] * 3
    settings = ProfileSettings(targets=("a",), warmup_ms=0, duration=0.0, iterations=2)
    assert len(measure(["a"], {"a": run("a", 0.1)}, settings, clock=clock)["a"]["host_ms"]) == 2


def test_host_memory_sees_an_allocation():
    memory = HostMemory()
    assert memory.rss() > 0
    if not memory.resettable:
        pytest.skip("/proc/self/clear_refs cannot reset the peak here")
    before = memory.rss()
    memory.reset()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    assert memory.peak() - before > 50
    del block


def test_run_profile_two_backends_in_onnx_runtime(demo_onnx, monkeypatch):
    from sparsifiner.runtime import profile_targets

    real = profile_targets.load_target

    def load(target, settings):
        if target.kind == "torch":
            raise RuntimeError("compile failed\nwith a traceback")  # a target that does not work is reported
        return real(target, settings)

    monkeypatch.setattr(profile_targets, "load_target", load)
    settings = ProfileSettings(targets=(str(demo_onnx), f"{demo_onnx}@extensions", f"{demo_onnx}@torch"),
                               batches=(1, 3), warmup_ms=0, duration=0, iterations=3, threads=1)
    report = json.loads(json.dumps(run_profile(settings)))
    rows = report["results"]
    assert [(r["batch"], r["spec"].endswith("@extensions")) for r in rows] == [(1, False), (1, True), (3, False), (3, True)]
    assert all(r["latency_ms"]["n"] == 3 and len(r["samples_ms"]) == 3 for r in rows)
    assert rows[0]["ratio"] is None and rows[1]["ratio"]["rounds"] == 3 and rows[1]["reference"] == rows[0]["target"]
    assert rows[2]["input_shape"] == [3, 3, 32, 32] and rows[3]["latency_ms"]["throughput"] > 0
    assert report["targets"][2]["status"] == "failed" and report["targets"][2]["error"] == "RuntimeError: compile failed"
    assert report["targets"][1]["providers"] == ["CPUExecutionProvider"]
    assert report["system"]["before"]["cpus"] >= 1 and rows[0]["memory"]["host_peak_mib"] > 0


def test_unknown_op_backend_is_create_sessions_error(demo_onnx):
    with pytest.raises(SparsifinerError, match="--ort-op must be one of"):
        run_profile(ProfileSettings(targets=(f"{demo_onnx}@nosuchop",), duration=0, iterations=1))


def test_cli_compare_writes_table_json_and_plot(demo_onnx, tmp_path):
    from click.testing import CliRunner

    from sparsifiner.cli import cli

    args = ["profile", "--compare", str(demo_onnx), f"{demo_onnx}@extensions", "--duration", "0", "--iterations", "2",
            "--warmup", "0", "--threads", "1", "-o", str(tmp_path / "run")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "p50 ms" in result.output and "1 (ref)" in result.output and "x (" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "run.png"]
    data = json.loads((tmp_path / "run.json").read_text())
    assert len(data["results"]) == 2 and data["results"][1]["ratio"]["rounds"] == 2
    assert data["files"] == [str(tmp_path / "run.json"), str(tmp_path / "run.png")]
