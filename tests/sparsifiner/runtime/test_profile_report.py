"""Profile outputs without a GPU: layer labels from engine names and the build sidecar, per-layer
statistics and the plugin's share from synthetic IProfiler timings, trtexec's --exportProfile
records, the table, PREFIX.json/.png and the CLI's one-line errors."""
import json

import pytest
from click.testing import CliRunner

from sparsifiner.cli import cli
from sparsifiner.runtime.profile_report import (decode_myelin_ops, format_profile, label_layer, layer_report,
                                                trtexec_profile, write_outputs)

# The shape of a TensorRT-RTX build sidecar's layer lists (names as TensorRT-RTX 1.7 logs them).
SIDECAR = {"layers": {
    "plugin": ["blocks.0.attn.topk_masked_attention", "blocks.1.attn.topk_masked_attention"],
    "engine": [{"name": "__mye35481_0_myl0_0", "type": "shape_call"},
               {"name": "__myl_MulAddReshTranSlicSlicSlicReshSlic_myl0_5", "type": "kgen"},
               {"name": "node_MatMul_12_myl0_4", "type": "gemm"},
               {"name": "blocks.0.attn.topk_masked_attention_myl0_18", "type": "custom_layer"},
               {"name": "blocks.1.attn.topk_masked_attention_myl0_40", "type": "custom_layer"}]}}
TIMES = {"__mye35481_0_myl0_0": [0.01, 0.01, 0.01, 0.01],
         "__myl_MulAddReshTranSlicSlicSlicReshSlic_myl0_5": [0.1, 0.1, 0.1, 0.3],
         "node_MatMul_12_myl0_4": [0.5, 0.5, 0.5, 0.5],
         "blocks.0.attn.topk_masked_attention_myl0_18": [0.2, 0.2, 0.2, 0.2],
         "blocks.1.attn.topk_masked_attention_myl0_40": [0.19, 0.21, 0.2, 0.2]}


def test_layer_labels():
    plugins = SIDECAR["layers"]["plugin"]
    types = {l["name"]: l["type"] for l in SIDECAR["layers"]["engine"]}
    fused = label_layer("__myl_MulAddReshTranSlicSlicSlicReshSlic_myl0_5", plugins, types)
    assert fused["category"] == "fused" and fused["ops"][:4] == ["Mul", "Add", "Reshape", "Transpose"]
    plugin = label_layer("blocks.1.attn.topk_masked_attention_myl0_40", plugins, types)
    assert plugin == {"category": "plugin", "ops": ["TopKMaskedAttention"], "nodes": ["blocks.1.attn.topk_masked_attention"]}
    assert label_layer("__mye35481_0_myl0_0", plugins, types)["category"] == "sync"
    assert label_layer("node_MatMul_12_myl0_4", plugins, types) == {"category": "gemm", "ops": [], "nodes": ["node_MatMul_12"]}
    # classic TensorRT names from the engine inspector
    assert label_layer("node_linear + node_gelu")["nodes"] == ["node_linear", "node_gelu"]
    region = label_layer("{ForeignNode[node_layer_norm...node_add_155]}")
    assert region["category"] == "fused" and region["nodes"] == ["node_layer_norm", "node_add_155"]
    assert label_layer("Reformatting CopyNode for Input Tensor 0")["category"] == "reformat"
    assert label_layer("blocks.0.attn.topk_masked_attention", plugins)["category"] == "plugin"
    assert decode_myelin_ops("MulMaxrSubExpSumDivMulGtrSele") == ["Mul", "ReduceMax", "Sub", "Exp", "ReduceSum",
                                                                   "Div", "Mul", "Greater", "Where"]


def test_layer_report_and_trtexec_records():
    report = layer_report(TIMES, 4, SIDECAR)
    assert report["plugin_layers"] == 2 and report["fused_layers"] == 1
    assert report["total_ms"] == pytest.approx(0.01 + 0.15 + 0.5 + 0.2 + 0.2)
    assert report["plugin_ms"] == pytest.approx(0.4) and report["plugin_share"] == pytest.approx(0.4 / 1.06)
    assert sum(r["percentage"] for r in report["rows"]) == pytest.approx(100.0)
    fused = report["rows"][1]
    assert fused["averageMs"] == pytest.approx(0.15) and fused["medianMs"] == pytest.approx(0.1)
    records = trtexec_profile(report)
    assert records[0] == {"count": 4}
    assert [r["name"] for r in records[1:]] == list(TIMES)  # the profiler's order
    # TensorRT's trex keeps records with 4 or 5 keys: ours are exactly trtexec's 5
    assert all(set(r) == {"name", "timeMs", "averageMs", "medianMs", "percentage"} for r in records[1:])
    assert records[3]["timeMs"] == pytest.approx(2.0) and records[3]["averageMs"] == pytest.approx(0.5)


def synthetic_report():
    row = lambda target, samples, ratio=None: {  # noqa: E731
        "target": target, "spec": target, "batch": 1, "input_shape": [1, 3, 32, 32], "reference": "a.onnx [x]",
        "latency_ms": {"p50": 2.0, "p90": 3.0, "p95": 3.5, "p99": 4.0, "mean": 2.5, "std": 0.5, "cv": 0.2, "min": 1.0,
                       "max": 4.0, "n": len(samples), "throughput": 400.0},
        "gpu_ms": None, "memory": {"host_peak_mib": 500.0}, "samples_ms": samples, "ratio": ratio}
    state = {"load_1m": 7.5, "cpus": 2}
    return {"settings": {"warmup_ms": 0, "duration": 1, "iterations": 3},
            "targets": [{"label": "a.onnx [x]"}, {"label": "b.engine [tensorrt]"}],
            "results": [row("a.onnx [x]", [1.0, 2.0, 4.0]),
                        row("b.engine [tensorrt]", [2.0, 3.0, 4.0], {"median": 1.5, "p10": 1.1, "p90": 2.0})],
            "layers": [{"target": "b.engine [tensorrt]", "batch": 1, **layer_report(TIMES, 4, SIDECAR),
                        "layer_info": {"Layers": ["x"]}}],
            "failures": {"c.safetensors [pytorch compile]": "RuntimeError: no compiler"},
            "system": {"before": state, "after": state}}


def test_table_and_files(tmp_path):
    report = synthetic_report()
    table = format_profile(report)
    assert "1.50x (1.10-2.00)" in table and "1 (ref)" in table and "load average 7.5" in table
    assert "plugin 2 layers 0.400 ms = 37.7 %" in table
    assert "FAILED c.safetensors [pytorch compile]: RuntimeError: no compiler" in table
    written = write_outputs(report, tmp_path / "run")
    names = sorted(p.split("/")[-1] for p in written)
    assert names == ["run.0.layers.json", "run.0.profile.json", "run.json", "run.png"]
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["layers"][0]["trtexec_profile"].endswith("run.0.profile.json") and "layer_info" not in saved["layers"][0]
    assert json.loads((tmp_path / "run.0.profile.json").read_text())[0] == {"count": 4}


def test_files_are_removed_when_one_fails(tmp_path, monkeypatch):
    from sparsifiner.runtime import profile_report

    def broken(layers):
        raise OSError("disk full")

    monkeypatch.setattr(profile_report, "trtexec_profile", broken)
    with pytest.raises(OSError):
        write_outputs(synthetic_report(), tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,fragment", [
    (["a.onnx", "b.onnx"], "several models: add --compare"),
    (["--compare", "absent.onnx"], "profile target not found"),
    (["m.onnx", "-o", "nowhere/run"], "output folder nowhere does not exist"),
    (["m.onnx", "--batch", "1,b"], "comma-separated integers"),
    (["m.onnx", "--iterations", "0"], "--iterations must be >= 1"),
])
def test_cli_errors_are_one_line(tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.onnx").write_bytes(b"x")
    result = CliRunner().invoke(cli, ["profile", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.output
