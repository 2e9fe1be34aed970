"""Exports and calibrations shared by the calibration tests (random-weights demo ViT: mechanics,
not accuracy; the accuracy test trains its own model).

custom: the default opset-18 export (calibration relabels it to opset 19); decomposed: an
opset-19 export whose op body is inlined into the graph.
"""
import pytest

from sparsifiner.calib import CalibrateSettings, calibrate
from sparsifiner.export import ExportSettings, ModelSource, export_onnx

SAMPLES = 16
REPORT_IMAGES = 48


@pytest.fixture(scope="session")
def demo_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib-onnx")
    cache = {}

    def get(form="custom", opset=18):
        if (form, opset) not in cache:
            path = folder / f"demo-{form}-{opset}.onnx"
            export_onnx(ExportSettings(source=ModelSource(model_name="demo"), attention=form, opset=opset), path)
            cache[(form, opset)] = path
        return cache[(form, opset)]

    return get


@pytest.fixture(scope="session")
def calibrated(demo_export, tmp_path_factory):
    """calibrated(form, mode, method=None) -> (output path, summary), cached."""
    folder = tmp_path_factory.mktemp("calib-out")
    cache = {}

    def get(form="custom", mode="int8", method=None):
        key = (form, mode, method)
        if key not in cache:
            src = demo_export(form, 18 if form == "custom" else 19)
            out = folder / f"{form}.{mode}.{method}.onnx"
            summary = calibrate(CalibrateSettings(str(src), str(out), data="demo", mode=mode, method=method,
                                                  samples=SAMPLES, eval_limit=REPORT_IMAGES))
            cache[key] = (out, summary)
        return cache[key]

    return get
