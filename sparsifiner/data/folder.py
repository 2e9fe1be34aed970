"""ImageFolder data (``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg``), preprocessed the model's way.

The transforms come from timm's data config of the model (mean, std, interpolation,
crop percentage and mode) at the model's own image size, through
``timm.data.resolve_data_config`` and ``create_transform``: training uses timm's
RandomResizedCrop + flip pipeline plus whatever extra ``create_transform`` arguments
the caller passes (RandAugment, random erasing, the crop's interpolation: DeiT's
recipe), or with ``augment`` off timm's deterministic resize + crop; evaluation the
resize + center crop.

The folders are checked up front (one line that says what to fix): a missing split,
no class folders, an empty class folder, a class present in val but not in train.
A corrupt image is found when it is read and raises SparsifinerError naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

from torch.utils.data import Dataset

from sparsifiner.errors import SparsifinerError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def scan_classes(split_dir: Path) -> list[str]:
    """The sorted class folder names of one split folder, checked."""
    if not split_dir.is_dir():
        raise SparsifinerError(f"{split_dir} is not a folder: an ImageFolder dataset needs train/ and val/ "
                               "subfolders with one folder per class")
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise SparsifinerError(f"{split_dir} has no class folders: put the images in {split_dir}/<class>/")
    return found


def scan_split(split_dir: Path, classes: Optional[list[str]] = None) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(path, class index)]) of one split folder, checked."""
    found = scan_classes(split_dir)
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise SparsifinerError(f"{split_dir} has classes that train/ lacks ({', '.join(extra[:3])}): "
                                   "use the same class folders in both splits")
    samples = []
    for index, name in enumerate(classes):
        folder = split_dir / name
        files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()) \
            if folder.is_dir() else []
        if not files and folder.is_dir():
            raise SparsifinerError(f"class folder {folder} has no images: add images or remove the folder")
        samples.extend((f, index) for f in files)
    return classes, samples


class ImageFolderDataset(Dataset):
    """A checked ImageFolder split; items are (transformed image, class index)."""

    def __init__(self, root: str, split: str, transform: Callable, classes: Optional[list[str]] = None):
        self.root = Path(root)
        self.classes, self.samples = scan_split(self.root / split, classes)
        self.targets = [t for _, t in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        return self.transform(open_rgb(path)), target


def open_rgb(path):
    """An image file as an RGB PIL image; unreadable files are a one-line error."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as exc:  # PIL raises several types for truncated or foreign files
        raise SparsifinerError(f"corrupt or unreadable image {path} ({type(exc).__name__}): "
                               "remove or replace it") from None


def model_data_config(model) -> dict:
    """timm's data config of ``model`` at the model's own input size."""
    from timm.data import resolve_data_config

    h, w = model.patch_embed.img_size
    return resolve_data_config({"input_size": (model.patch_embed.proj.in_channels, int(h), int(w))}, model=model)


def data_config_dict(model) -> dict:
    """``model_data_config`` with lists instead of tuples: JSON for artifacts' metadata."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in model_data_config(model).items()}


def image_folder_datasets(root: str, model, train_transform: Optional[dict] = None,
                          augment: bool = True) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """(train, val) datasets of ``root`` with the model's timm transforms; ``train_transform``:
    extra ``create_transform`` arguments of the training transform (they override the data config)."""
    from timm.data import create_transform

    if not Path(root).is_dir():
        raise SparsifinerError(f"data folder {root} does not exist: pass --data digits or an ImageFolder root "
                               "with train/ and val/")
    cfg = model_data_config(model)
    train_tf = create_transform(**{**cfg, **(train_transform or {})}, is_training=True, no_aug=not augment)
    val_tf = create_transform(**cfg, is_training=False)
    train = ImageFolderDataset(root, "train", train_tf)
    val = ImageFolderDataset(root, "val", val_tf, classes=train.classes)
    return train, val
