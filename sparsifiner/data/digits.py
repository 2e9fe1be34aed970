"""The bundled demo data: scikit-learn's 8x8 handwritten digits as 32x32 RGB images.

1,797 real images (``sklearn.datasets.load_digits``, shipped with scikit-learn, no
download). Each 8x8 image (grey levels 0..16) is scaled to [0, 1], upsampled
bilinearly to 32x32, copied to 3 channels and normalised with the model's mean and
std. The train/val split is stratified with a fixed seed (80/20: 1,437 / 360), the
same on every machine.

Augmentation (training only) is a small random affine warp whose parameters come
from a generator seeded by (seed, epoch, index): it does not touch the global RNG, so
the same image gets the same warp whatever the number of processes or workers, and a
resumed run sees exactly the images the uninterrupted one saw.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DIGITS_SIZE = 32
DIGITS_CLASSES = 10
SPLIT_SEED = 0
VAL_FRACTION = 0.2


def load_digits_tensors(img_size: int = DIGITS_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as [N, 3, img_size, img_size] in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)  # [N, 1, 8, 8]
    images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return images.clamp_(0, 1).expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(bunch.target).long()


def split_indices(labels: torch.Tensor) -> tuple[list[int], list[int]]:
    """Deterministic stratified split: (train indices, val indices)."""
    from sklearn.model_selection import train_test_split

    idx = list(range(len(labels)))
    train, val = train_test_split(idx, test_size=VAL_FRACTION, random_state=SPLIT_SEED, stratify=labels.numpy())
    return sorted(train), sorted(val)


class DigitsDataset(Dataset):
    """One split of the demo digits; items are (normalised image [3, S, S], label)."""

    classes = [str(i) for i in range(DIGITS_CLASSES)]

    def __init__(self, split: str, mean: Sequence[float] = (0.5,) * 3, std: Sequence[float] = (0.5,) * 3,
                 img_size: int = DIGITS_SIZE, augment: bool = False, seed: int = 0,
                 limit: Optional[int] = None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        images, labels = load_digits_tensors(img_size)
        train, val = split_indices(labels)
        idx = torch.tensor(train if split == "train" else val)
        if limit is not None:
            idx = idx[:limit]
        self.images = images[idx]
        self.targets = labels[idx]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (called by the training loop)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.augment:
            image = self._warp(image, index)
        return (image - self.mean) / self.std, int(self.targets[index])

    def _warp(self, image: torch.Tensor, index: int) -> torch.Tensor:
        """Random rotation (+-10 deg), scale (0.9-1.1) and shift (+-2 px at 32 px)."""
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_007 + index)
        u = torch.rand(4, generator=gen) * 2 - 1
        angle, scale = math.radians(10) * float(u[0]), 1 + 0.1 * float(u[1])
        shift = 2 * 2 / image.shape[-1]  # 2 px in normalised [-1, 1] coordinates
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        theta = torch.tensor([[cos, -sin, shift * float(u[2])], [sin, cos, shift * float(u[3])]]).unsqueeze(0)
        grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
        return F.grid_sample(image.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False).squeeze(0)
