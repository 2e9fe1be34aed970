"""Validate an exported graph: PyTorch and ONNX Runtime on the same inputs.

Built like Polygraphy's ``run --onnxrt`` comparison:

* loaders are small callables that build a thing on first use (``TorchModelLoader``,
  ``OrtSessionLoader``), and input loaders are iterables of ``{input_name: array}``
  (``RandomInputs``, ``ImageFolderInputs``);
* runners take a dict of named arrays and return one (``TorchRunner``, ``OrtRunner``);
* the comparator (``sparsifiner.export.compare``) knows nothing about backends.

The PyTorch side always runs in fp32: for an fp16 graph the report is the error the
deployment adds to the spec, hence the looser fp16 default tolerance. Which PyTorch
model to run comes from the file's metadata (the export's source) unless a checkpoint
or model name is given.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from sparsifiner.errors import SparsifinerError
from sparsifiner.export.compare import DEFAULT_TOLERANCES, compare_outputs
from sparsifiner.export.metadata import INPUT_NAME, OUTPUT_NAME, read_metadata
from sparsifiner.export.settings import ModelSource

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
DEFAULT_DYNAMIC_BATCH = 4
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclass(frozen=True)
class ValidateSettings:
    """What ``sparsifiner validate`` compares.

    source: the PyTorch model; None takes the one recorded in the file's metadata.
    inputs: "random" (standard normal, seeded), "demo" (the digits of sparsifiner.data)
        or a folder of images (preprocessed with the file's timm data config).
    batch: batch size (default: the graph's fixed size, else 4); num_batches: how many
        random or demo batches. ort_op: "function" or "extensions" (see sparsifiner.runtime.ort).
    atol / rtol: None picks the default for the graph's dtype (compare.DEFAULT_TOLERANCES).
    """

    onnx_path: str
    source: Optional[ModelSource] = None
    inputs: str = "random"
    batch: Optional[int] = None
    num_batches: int = 2
    seed: int = 0
    ort_op: str = "function"
    atol: Optional[float] = None
    rtol: Optional[float] = None

    def __post_init__(self):
        if self.batch is not None and self.batch < 1:
            raise SparsifinerError(f"--batch must be >= 1, got {self.batch}")
        if self.num_batches < 1:
            raise SparsifinerError(f"--num-batches must be >= 1, got {self.num_batches}")
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise SparsifinerError(f"--{name} must be >= 0, got {value}")


# --- loaders -----------------------------------------------------------------------------------

class TorchModelLoader:
    """Callable returning the fp32 PyTorch model of a source and attention form."""

    def __init__(self, source: ModelSource, attention: str):
        self.source, self.attention = source, attention

    def __call__(self):
        from sparsifiner.export.models import load_model

        return load_model(self.source, self.attention)[0].float().eval()


class OrtSessionLoader:
    """Callable returning an ONNX Runtime session (op backend: see runtime.ort)."""

    def __init__(self, path: str, op_backend: str = "function"):
        self.path, self.op_backend = path, op_backend

    def __call__(self):
        from sparsifiner.runtime.ort import create_session

        return create_session(self.path, self.op_backend)


class RandomInputs:
    """``num_batches`` feeds of standard-normal images (roughly normalised pixels)."""

    def __init__(self, shape: tuple, num_batches: int, seed: int = 0):
        self.shape, self.num_batches, self.seed = tuple(shape), num_batches, seed

    def __iter__(self) -> Iterator[dict]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.num_batches):
            yield {INPUT_NAME: rng.standard_normal(self.shape, dtype=np.float32)}

    def describe(self) -> str:
        return f"random normal, seed {self.seed}"


class ImageFolderInputs:
    """Images of a folder (recursive, sorted), preprocessed with a timm data config.

    A fixed-batch graph needs full batches: the last one is filled by cycling from the
    first images.
    """

    def __init__(self, folder: Path, data_config: dict, batch: int):
        self.folder, self.batch = Path(folder), batch
        if not self.folder.is_dir():
            raise SparsifinerError(f"image folder not found: {self.folder}")
        self.files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SparsifinerError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.folder}")
        self.config = data_config

    def transform(self):
        from timm.data import create_transform

        keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
        config = {k: self.config[k] for k in keys if k in self.config}
        config["input_size"] = tuple(config["input_size"])
        for key in ("mean", "std"):
            if key in config:
                config[key] = tuple(config[key])
        return create_transform(**config, is_training=False)

    def __iter__(self) -> Iterator[dict]:
        from PIL import Image

        transform = self.transform()
        count = len(self.files)
        padded = -(-count // self.batch) * self.batch
        for start in range(0, padded, self.batch):
            arrays = []
            for i in range(start, start + self.batch):
                path = self.files[i % count]
                try:
                    with Image.open(path) as image:
                        arrays.append(transform(image.convert("RGB")).numpy())
                except OSError as exc:
                    raise SparsifinerError(f"cannot read image {path}: {exc}") from exc
            yield {INPUT_NAME: np.stack(arrays).astype(np.float32)}

    def describe(self) -> str:
        return f"{len(self.files)} images from {self.folder}"


class DemoInputs:
    """The first batches of the demo digits' validation split (``sparsifiner.data``).

    The digits are normalised with the file's preprocess mean/std at its input size.
    """

    def __init__(self, data_config: dict, batch: int, num_batches: int):
        try:
            from sparsifiner.data import DigitsDataset
        except ImportError as exc:
            raise SparsifinerError("the demo digits need sparsifiner.data and scikit-learn: "
                                   "use --inputs random or --inputs FOLDER") from exc
        size = int(data_config["input_size"][-1])
        self.dataset = DigitsDataset("val", data_config["mean"], data_config["std"], size, augment=False,
                                     limit=batch * num_batches)
        self.batch, self.num_batches = batch, num_batches

    def __iter__(self) -> Iterator[dict]:
        count = len(self.dataset)
        for start in range(0, self.batch * self.num_batches, self.batch):
            images = [self.dataset[i % count][0].numpy() for i in range(start, start + self.batch)]
            yield {INPUT_NAME: np.stack(images).astype(np.float32)}

    def describe(self) -> str:
        return f"demo digits (val), {min(len(self.dataset), self.batch * self.num_batches)} images"


# --- runners -----------------------------------------------------------------------------------

class TorchRunner:
    name = "pytorch"

    def __init__(self, loader):
        self.loader, self.model = loader, None

    def activate(self) -> None:
        if self.model is None:
            self.model = self.loader()

    def infer(self, feed: dict) -> dict:
        import torch

        self.activate()
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(feed[INPUT_NAME], dtype=np.float32)))
        return {OUTPUT_NAME: out.float().numpy()}


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


# --- validation --------------------------------------------------------------------------------

def source_for_validation(onnx_path, *, checkpoint: Optional[str] = None, model_name: Optional[str] = None,
                          pretrained: bool = False, seed: Optional[int] = None, img_size: Optional[int] = None,
                          settings: Optional[dict] = None) -> Optional[ModelSource]:
    """The PyTorch model to validate against, from flags; None keeps the export's source.

    ``--model NAME`` naming the model the file was exported from keeps the export's
    seed, settings and timm kwargs, with the given flags on top; another name starts
    from defaults. A checkpoint brings its own settings.
    """
    from sparsifiner.settings import SparsifinerSettings

    settings = settings or {}
    if checkpoint is None and model_name is None:
        if settings or pretrained or seed is not None or img_size is not None:
            raise SparsifinerError("model flags need --model NAME (or --checkpoint PATH) to apply to")
        return None
    if checkpoint is not None:
        return ModelSource(checkpoint=checkpoint, img_size=img_size,
                           settings=SparsifinerSettings(**settings) if settings else None, pretrained=pretrained)
    base = read_metadata(onnx_path)["sparsifiner"].get("source") or {}
    if base.get("model_name") == model_name:
        recorded = ModelSource.from_dict(base)
        merged = (recorded.settings or SparsifinerSettings()).replace(**settings) if settings else recorded.settings
        return ModelSource(model_name=model_name, pretrained=pretrained or recorded.pretrained,
                           seed=recorded.seed if seed is None else seed,
                           img_size=recorded.img_size if img_size is None else img_size,
                           settings=merged, timm_kwargs=recorded.timm_kwargs)
    return ModelSource(model_name=model_name, pretrained=pretrained, seed=seed or 0, img_size=img_size,
                       settings=SparsifinerSettings(**settings) if settings else None)



def validate_onnx(settings: ValidateSettings) -> dict:
    """Run PyTorch and ONNX Runtime, compare, and return the report (``passed`` inside)."""
    import onnxruntime  # noqa: F401  (fail early with the import error if missing)

    from sparsifiner.runtime import ort as ort_runtime

    meta = read_metadata(settings.onnx_path)
    info, preprocess = meta["sparsifiner"], meta["preprocess"]
    if "attention" not in info:
        raise SparsifinerError(f"{settings.onnx_path} has no Sparsifiner metadata: export it with `sparsifiner export`")
    source = settings.source or ModelSource.from_dict(info["source"])
    dtype = info.get("dtype", "fp32")
    default_atol, default_rtol = DEFAULT_TOLERANCES.get(dtype, DEFAULT_TOLERANCES["fp32"])
    atol = default_atol if settings.atol is None else settings.atol
    rtol = default_rtol if settings.rtol is None else settings.rtol

    fixed = info.get("batch") if isinstance(info.get("batch"), int) else None
    batch = settings.batch or fixed or DEFAULT_DYNAMIC_BATCH
    if fixed is not None and batch != fixed:
        raise SparsifinerError(f"the graph has a fixed batch of {fixed}: use --batch {fixed} or export with --batch dynamic")
    input_size = tuple(preprocess.get("input_size") or ())
    if len(input_size) != 3:
        raise SparsifinerError(f"{settings.onnx_path} lacks preprocess.input_size metadata: export it again")

    if settings.inputs == "random":
        feeds = RandomInputs((batch, *input_size), settings.num_batches, settings.seed)
    elif settings.inputs == "demo":
        feeds = DemoInputs(preprocess, batch, settings.num_batches)
    else:
        feeds = ImageFolderInputs(Path(settings.inputs), preprocess, batch)

    calls_before = ort_runtime.KERNEL_CALLS["count"]
    runners = [TorchRunner(TorchModelLoader(source, info["attention"])),
               OrtRunner(OrtSessionLoader(settings.onnx_path, settings.ort_op))]
    run = run_all(runners, feeds)
    reference, candidate = run["outputs"][TorchRunner.name], run["outputs"][OrtRunner.name]
    comparisons = compare_outputs(reference, candidate, atol, rtol)
    return {
        "onnx": str(settings.onnx_path),
        "attention": info["attention"],
        "dtype": dtype,
        "model": (info.get("arch") or {}).get("model"),
        "source": source.kind,
        "trained": info.get("trained"),
        "budget": info.get("budget"),
        "ort_op": settings.ort_op,
        "kernel_calls": ort_runtime.KERNEL_CALLS["count"] - calls_before,
        "inputs": feeds.describe() if hasattr(feeds, "describe") else settings.inputs,
        "batch": batch,
        "samples": int(next(iter(reference.values())).shape[0]),
        "atol": atol,
        "rtol": rtol,
        "seconds": {k: round(v, 3) for k, v in run["seconds"].items()},
        "outputs": [c.to_dict() for c in comparisons],
        "passed": all(c.passed for c in comparisons),
    }


def format_report(report: dict) -> str:
    """A short human table of a validation report."""
    lines = [
        f"{report['onnx']}: {report['attention']} {report['dtype']} graph of {report['model']} "
        f"(budget {report['budget']}, {'trained' if report['trained'] else 'random predictor'})",
        f"inputs: {report['inputs']}, batch {report['batch']}, {report['samples']} samples; "
        f"ONNX Runtime op: {report['ort_op']}" + (f" ({report['kernel_calls']} kernel calls)"
                                                 if report["ort_op"] == "extensions" else ""),
        f"tolerance: |ort - torch| <= {report['atol']:g} + {report['rtol']:g} * |torch|",
        f"{'output':<10} {'max abs':>10} {'max rel':>10} {'p50':>10} {'p90':>10} {'p99':>10} {'top-1':>7} {'bad':>6}  result",
    ]
    for out in report["outputs"]:
        q = out["quantiles"]
        top1 = "-" if out["top1"] is None else f"{100 * out['top1']:.1f}%"
        lines.append(
            f"{out['name']:<10} {out['max_abs']:>10.3g} {out['max_rel']:>10.3g} {q['p50']:>10.3g} {q['p90']:>10.3g} "
            f"{q['p99']:>10.3g} {top1:>7} {out['mismatches']:>6}  {'PASS' if out['passed'] else 'FAIL'}"
        )
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines)
