"""Input feeds: iterables of ``{input_name: array}`` batches for runners and calibrators.

Polygraphy's data-loader model: a feed knows nothing about the backend that consumes
it. Three sources, each preprocessed with the data config an artifact records
(timm's mean, std, interpolation, crop; see ``sparsifiner.artifacts``):

* ``RandomInputs``: seeded standard-normal images (roughly normalised pixels);
* ``DemoInputs``: the bundled digits' validation split, in order;
* ``ImageFolderInputs``: every image under a folder (recursive, sorted).

``build_feeds(inputs, preprocess, batch, num_batches, seed)`` picks one from a string:
"random", "demo" or a folder path. Arrays are float32 NCHW.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from sparsifiner.data.folder import IMAGE_EXTENSIONS, open_rgb
from sparsifiner.errors import SparsifinerError

INPUT_NAME = "input"


class RandomInputs:
    """``num_batches`` feeds of standard-normal images."""

    def __init__(self, shape: tuple, num_batches: int, seed: int = 0, input_name: str = INPUT_NAME):
        self.shape, self.num_batches, self.seed, self.input_name = tuple(shape), num_batches, seed, input_name

    def __iter__(self) -> Iterator[dict]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.num_batches):
            yield {self.input_name: rng.standard_normal(self.shape, dtype=np.float32)}

    def __len__(self) -> int:
        return self.num_batches

    def describe(self) -> str:
        return f"random normal, seed {self.seed}"


class ImageFolderInputs:
    """Images of a folder (recursive, sorted), preprocessed with a timm data config.

    A fixed-batch graph needs full batches: the last one is filled by cycling from the
    first images (``samples`` counts each image once).
    """

    def __init__(self, folder, data_config: dict, batch: int, input_name: str = INPUT_NAME):
        self.folder, self.batch, self.input_name = Path(folder), batch, input_name
        if not self.folder.is_dir():
            raise SparsifinerError(f"image folder not found: {self.folder}")
        self.files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise SparsifinerError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {self.folder}")
        self.config = data_config

    def transform(self):
        from timm.data import create_transform

        keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
        config = {k: self.config[k] for k in keys if k in self.config}
        for key in ("input_size", "mean", "std"):
            if key in config:
                config[key] = tuple(config[key])
        return create_transform(**config, is_training=False)

    def __len__(self) -> int:
        return -(-len(self.files) // self.batch)

    def __iter__(self) -> Iterator[dict]:
        transform = self.transform()
        count = len(self.files)
        for start in range(0, len(self) * self.batch, self.batch):
            arrays = [transform(open_rgb(self.files[i % count])).numpy() for i in range(start, start + self.batch)]
            yield {self.input_name: np.stack(arrays).astype(np.float32)}

    def describe(self) -> str:
        return f"{len(self.files)} images from {self.folder}"


class DemoInputs:
    """The first ``batch * num_batches`` digits of the demo's validation split (cycled when short),
    normalised with the data config's mean/std at its input size."""

    def __init__(self, data_config: dict, batch: int, num_batches: int, input_name: str = INPUT_NAME):
        from sparsifiner.data.digits import DigitsDataset

        size = int(data_config["input_size"][-1])
        self.dataset = DigitsDataset("val", data_config["mean"], data_config["std"], size, augment=False,
                                     limit=batch * num_batches)
        self.batch, self.num_batches, self.input_name = batch, num_batches, input_name

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict]:
        count = len(self.dataset)
        for start in range(0, self.batch * self.num_batches, self.batch):
            images = [self.dataset[i % count][0].numpy() for i in range(start, start + self.batch)]
            yield {self.input_name: np.stack(images).astype(np.float32)}

    def labels(self) -> np.ndarray:
        """Class labels of the images in feed order (for accuracy on labelled data)."""
        count = len(self.dataset)
        return np.array([int(self.dataset[i % count][1]) for i in range(self.batch * self.num_batches)])

    def describe(self) -> str:
        return f"demo digits (val), {min(len(self.dataset), self.batch * self.num_batches)} images"


def demo_batches(batch: int) -> int:
    """Batches of ``batch`` images that cover the whole demo validation split once."""
    from sparsifiner.data.digits import DigitsDataset

    return -(-len(DigitsDataset("val")) // batch)


def build_feeds(inputs: str, data_config: dict, batch: int, num_batches: int, seed: int = 0,
                input_name: str = INPUT_NAME):
    """A feed from its name: "random", "demo", or an image folder path."""
    if batch < 1 or num_batches < 1:
        raise SparsifinerError(f"batch and num_batches must be >= 1, got {batch} and {num_batches}")
    if inputs == "random":
        return RandomInputs((batch, *data_config["input_size"]), num_batches, seed, input_name)
    if inputs == "demo":
        return DemoInputs(data_config, batch, num_batches, input_name)
    return ImageFolderInputs(Path(inputs), data_config, batch, input_name)
