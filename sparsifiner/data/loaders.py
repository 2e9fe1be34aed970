"""Data loaders that behave the same on one process and under torchrun.

Training shuffles with ``DistributedSampler`` (seeded by seed + epoch; one replica on
a single process), so the union of the ranks' batches equals the single-process batch
of the same global size. Evaluation shards the val set without padding
(``ShardSampler``: rank r takes r, r + world, ...), so summed counts are exact.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ...: every item exactly once across the ranks."""

    def __init__(self, length: int, world: int = 1, rank: int = 0):
        self.indices = range(rank, length, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loader(dataset: Dataset, batch_size: int, train: bool, world: int = 1, rank: int = 0,
                 seed: int = 0, workers: int = 0) -> DataLoader:
    """A loader of per-process batches of ``batch_size``; training batches are full (drop_last)."""
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    else:
        sampler = ShardSampler(len(dataset), world, rank)
    generator = torch.Generator().manual_seed(seed + 7919 * rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=train,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False, generator=generator)


def set_loader_epoch(loader: DataLoader, epoch: int, seed: int = 0, rank: int = 0) -> None:
    """Select the shuffle, worker seeds and augmentation draws of ``epoch``."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(seed + 7919 * rank + 104_729 * epoch)
    dataset = loader.dataset
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
