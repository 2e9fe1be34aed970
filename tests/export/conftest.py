"""Shared, cached exports for the export tests (the dynamo exporter takes seconds each).

Two models: the demo ViT (N = 65) and a DeiT-Tiny (widths and heads of deit_tiny,
N = 197) cut to 2 blocks. Both have random weights and default settings, so the
predictor's coefficients all fall under tau_coef and every score ties at 0: the
kept keys are the lowest indices, which ONNX TopK and the reference agree on exactly.
(With near-uniform random coefficients but no pruning, near-ties in the top-k flip
between runtimes; see test_validate.py.)
"""
import pytest

from sparsifiner.export import ExportSettings, ModelSource, export_onnx

SOURCES = {
    "demo": ModelSource(model_name="demo"),
    "deit": ModelSource(model_name="deit_tiny_patch16_224", timm_kwargs={"depth": 2}),
}
FORMS = ("custom", "decomposed", "dense")


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(model, form, batch="dynamic", dtype="fp32", opset=18) -> (path, summary), cached."""
    folder = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(model, form, batch="dynamic", dtype="fp32", opset=18):
        key = (model, form, batch, dtype, opset)
        if key not in cache:
            path = folder / f"{model}-{form}-{batch}-{dtype}-{opset}.onnx"
            settings = ExportSettings(source=SOURCES[model], attention=form, batch=batch, dtype=dtype, opset=opset)
            cache[key] = (path, export_onnx(settings, path))
        return cache[key]

    return get


@pytest.fixture(scope="session")
def torch_models():
    """torch_models(model, form) -> the fp32 PyTorch model an export was made from, cached."""
    from sparsifiner.model.source import load_model

    cache = {}

    def get(model, form):
        if (model, form) not in cache:
            cache[(model, form)] = load_model(SOURCES[model], form)[0].eval()
        return cache[(model, form)]

    return get
