"""Datasets: the bundled demo digits and ImageFolder trees, plus the (distributed) loaders.

``build_datasets(data, model)`` returns (train, val): ``data`` is "digits" for the
bundled set or the root of an ImageFolder tree with train/ and val/ subfolders.
"""
from __future__ import annotations

from typing import Optional

from sparsifiner.data.digits import DIGITS_CLASSES, DIGITS_SIZE, DigitsDataset
from sparsifiner.data.folder import ImageFolderDataset, image_folder_datasets, model_data_config
from sparsifiner.data.loaders import ShardSampler, build_loader, set_loader_epoch

DEMO_DATA = "digits"


def build_datasets(data: str, model, augment: bool = True, seed: int = 0,
                   limit: Optional[int] = None, transform: Optional[dict] = None):
    """(train, val) datasets for ``model``; ``limit`` keeps the first images of each (tests).

    ``transform``: extra ``timm.data.create_transform`` arguments of the ImageFolder
    training transform (RandAugment, random erasing, ...); the digits keep their own
    small warps. ``augment`` False: no random training augmentation at all."""
    from torch.utils.data import Subset

    if data == DEMO_DATA:
        cfg = model_data_config(model)
        size = model.patch_embed.img_size[0]
        train = DigitsDataset("train", cfg["mean"], cfg["std"], size, augment=augment, seed=seed, limit=limit)
        val = DigitsDataset("val", cfg["mean"], cfg["std"], size, augment=False, limit=limit)
        return train, val
    train, val = image_folder_datasets(data, model, train_transform=transform, augment=augment)
    if limit is not None:
        train, val = Subset(train, range(min(limit, len(train)))), Subset(val, range(min(limit, len(val))))
    return train, val


def num_classes_of(data: str) -> int:
    """Number of classes of a data source (the class folders of train/ for an ImageFolder)."""
    from pathlib import Path

    from sparsifiner.data.folder import scan_classes

    return DIGITS_CLASSES if data == DEMO_DATA else len(scan_classes(Path(data) / "train"))


__all__ = [
    "DEMO_DATA",
    "DIGITS_CLASSES",
    "DIGITS_SIZE",
    "DigitsDataset",
    "ImageFolderDataset",
    "ShardSampler",
    "build_datasets",
    "build_loader",
    "image_folder_datasets",
    "model_data_config",
    "num_classes_of",
    "set_loader_epoch",
]
