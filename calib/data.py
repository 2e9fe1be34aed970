"""Calibration and report images for ``sparsifiner calibrate``, preprocessed as the graph says.

``calibration_data(data, preprocess, samples, batch, eval_limit)`` returns a
``CalibrationData``: a calibration feed (an iterable of ``{input_name: array}`` batches,
Polygraphy's calibrator input), a report feed and the report's labels where the data
has them. Images are read lazily, batch by batch (a 1024 px calibration set does not fit
in memory), with the timm data config recorded in the graph's metadata.

* "demo": the digits' train split calibrates, the 360 val digits are the report set.
* a folder with train/ and val/: train/ calibrates, val/ (labelled by class folder, classes
  from train/ as in training) is the report set.
* any other folder: its images (recursive) calibrate and are the report set; labelled
  when every image sits in a class folder.

Calibration images are spread evenly over the sorted list (the first N of a class-sorted
folder would all be one class).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from sparsifiner.artifacts import INPUT_NAME
from sparsifiner.errors import SparsifinerError


class LazyBatches:
    """``{input_name: float32 NCHW}`` batches of ``count`` items read by ``load(i)``.

    fixed_batch: every batch has exactly this many images (the last one is filled by
    cycling from the first); None lets the last batch be short.
    """

    def __init__(self, load: Callable[[int], np.ndarray], count: int, batch: int, fixed_batch: bool,
                 description: str, input_name: str = INPUT_NAME):
        self.load, self.count, self.batch, self.fixed = load, count, batch, fixed_batch
        self.description, self.input_name = description, input_name

    def __len__(self) -> int:
        return -(-self.count // self.batch)

    def __iter__(self) -> Iterator[dict]:
        for start in range(0, self.count, self.batch):
            stop = start + self.batch if self.fixed else min(start + self.batch, self.count)
            images = [self.load(i % self.count) for i in range(start, stop)]
            yield {self.input_name: np.stack(images).astype(np.float32)}

    def describe(self) -> str:
        return self.description


@dataclass
class CalibrationData:
    calibration: LazyBatches
    report: LazyBatches
    labels: Optional[np.ndarray]  # class index per report image (report order), None when unlabelled
    classes: Optional[int]  # number of classes of the labelled data
    same_images: bool  # the report set is the calibration source (no held-out images)


def spread(total: int, count: int) -> np.ndarray:
    """``count`` indices spread evenly over range(total), in order."""
    return np.unique(np.linspace(0, total - 1, count).round().astype(int))


def _check_samples(samples: int, available: int, where: str) -> None:
    if available < samples:
        raise SparsifinerError(f"too few samples: --samples {samples} but {where} has only {available} images; "
                               "lower --samples or add images")


def _demo(preprocess: dict, samples: int, batch: int, fixed: bool, eval_limit: Optional[int]) -> CalibrationData:
    from sparsifiner.data.digits import DIGITS_CLASSES, DigitsDataset

    size = int(preprocess["input_size"][-1])
    train = DigitsDataset("train", preprocess["mean"], preprocess["std"], size)
    _check_samples(samples, len(train), "the demo digits' train split")
    val = DigitsDataset("val", preprocess["mean"], preprocess["std"], size, limit=eval_limit)
    picked = spread(len(train), samples)
    calib = LazyBatches(lambda i: train[int(picked[i])][0].numpy(), len(picked), batch, fixed,
                        f"{len(picked)} demo digits (train split)")
    report = LazyBatches(lambda i: val[i][0].numpy(), len(val), batch, fixed, f"{len(val)} demo digits (val split)")
    return CalibrationData(calib, report, val.targets.numpy().copy(), DIGITS_CLASSES, same_images=False)


def _labelled_files(folder: Path, classes: Optional[list] = None) -> tuple[Optional[list], list]:
    """(classes, [(path, label)]) when every image of ``folder`` sits in a class folder, else (None, [(path, -1)])."""
    from sparsifiner.data.feeds import ImageFolderInputs
    from sparsifiner.data.folder import scan_split

    files = ImageFolderInputs(folder, {}, 1).files  # checks: folder exists and has images
    subfolders = [e for e in folder.iterdir() if e.is_dir() and not e.name.startswith(".")]
    if classes is None and (not subfolders or any(p.parent == folder for p in files)):
        return None, [(str(p), -1) for p in files]
    classes, labelled = scan_split(folder, classes)
    return classes, labelled


def _folder(root: Path, preprocess: dict, samples: int, batch: int, fixed: bool,
            eval_limit: Optional[int]) -> CalibrationData:
    from sparsifiner.data.feeds import ImageFolderInputs
    from sparsifiner.data.folder import open_rgb, scan_classes

    if not root.is_dir():
        raise SparsifinerError(f"data folder not found: {root} (pass an image folder or 'demo')")
    split = (root / "train").is_dir() and (root / "val").is_dir()
    calib_dir = root / "train" if split else root
    calib_files = ImageFolderInputs(calib_dir, preprocess, batch).files  # one-line errors: no images
    _check_samples(samples, len(calib_files), str(calib_dir))
    if split:
        classes, labelled = _labelled_files(root / "val", scan_classes(root / "train"))
    else:
        classes, labelled = _labelled_files(root)
    if eval_limit is not None:
        labelled = [labelled[int(i)] for i in spread(len(labelled), min(eval_limit, len(labelled)))]
    transform = ImageFolderInputs(calib_dir, preprocess, batch).transform()
    picked = [calib_files[int(i)] for i in spread(len(calib_files), samples)]
    calib = LazyBatches(lambda i: transform(open_rgb(picked[i])).numpy(), len(picked), batch, fixed,
                        f"{len(picked)} images from {calib_dir}")
    report = LazyBatches(lambda i: transform(open_rgb(labelled[i][0])).numpy(), len(labelled), batch, fixed,
                         f"{len(labelled)} images from {root / 'val' if split else root}")
    labels = np.array([label for _, label in labelled]) if classes is not None else None
    return CalibrationData(calib, report, labels, len(classes) if classes else None, same_images=not split)


def calibration_data(data: str, preprocess: dict, samples: int, batch: int, fixed_batch: bool,
                     eval_limit: Optional[int] = None) -> CalibrationData:
    """Calibration and report feeds for ``data`` ("demo" or a folder); see the module docstring."""
    if data == "demo":
        return _demo(preprocess, samples, batch, fixed_batch, eval_limit)
    return _folder(Path(data), preprocess, samples, batch, fixed_batch, eval_limit)
