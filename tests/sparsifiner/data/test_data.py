"""The bundled digits, ImageFolder checks and transforms, and the (distributed) samplers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sparsifiner.data import DigitsDataset, ShardSampler, build_datasets, build_loader, image_folder_datasets, model_data_config
from sparsifiner.data.digits import load_digits_tensors, split_indices
from sparsifiner.errors import SparsifinerError
from sparsifiner.model.zoo import create_demo_dense


def test_digits_split_is_fixed_stratified_and_disjoint():
    images, labels = load_digits_tensors()
    assert images.shape == (1797, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    train, val = split_indices(labels)
    assert (len(train), len(val)) == (1437, 360)
    assert not set(train) & set(val)
    assert (train, val) == split_indices(labels)
    counts = torch.bincount(labels[val], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class


def test_digits_are_normalised_with_the_models_mean_and_std():
    model = create_demo_dense()
    train, val = build_datasets("digits", model, augment=False)
    cfg = model_data_config(model)
    assert cfg["input_size"] == (3, 32, 32)
    x, y = val[0]
    raw = val.images[0]
    mean = torch.tensor(cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(cfg["std"]).view(3, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)
    assert isinstance(y, int) and len(train) == 1437 and len(val) == 360


def test_augmentation_is_seeded_by_seed_epoch_and_index_not_the_global_rng():
    ds = DigitsDataset("train", augment=True, seed=3, limit=4)
    ds.set_epoch(1)
    torch.manual_seed(0)
    a = ds[2][0]
    torch.manual_seed(123)
    b = ds[2][0]
    torch.testing.assert_close(a, b)
    ds.set_epoch(2)
    assert not torch.equal(ds[2][0], a)
    state = torch.get_rng_state()
    ds[1]
    assert torch.equal(state, torch.get_rng_state())


def test_shard_sampler_covers_every_item_once():
    shards = [list(ShardSampler(10, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))


def test_two_ranks_split_the_single_process_global_batch():
    ds = DigitsDataset("val", limit=64)
    idx_one = list(iter(build_loader(ds, 16, True, 1, 0, seed=5).sampler))
    idx_two = [list(iter(build_loader(ds, 8, True, 2, r, seed=5).sampler)) for r in range(2)]
    for step in range(4):
        assert sorted(idx_one[16 * step:16 * step + 16]) == sorted(idx_two[0][8 * step:8 * step + 8]
                                                                  + idx_two[1][8 * step:8 * step + 8])
    assert len(build_loader(ds, 16, True, 1, 0)) == 4 and len(build_loader(ds, 8, True, 2, 1)) == 4


def _folder(root, sizes=(20, 14)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (*sizes, 3), dtype=np.uint8)).save(root / split / name / f"{i}.jpg")
    return root


def test_image_folder_uses_the_models_timm_transform(tmp_path):
    model = create_demo_dense()
    train, val = image_folder_datasets(str(_folder(tmp_path)), model)
    assert train.classes == ["cat", "dog"] and len(train) == 4 and len(val) == 4
    x, y = val[3]
    assert x.shape == (3, 32, 32) and y == 1
    assert train[0][0].shape == (3, 32, 32)


def test_image_folder_errors_are_one_line(tmp_path):
    model = create_demo_dense()
    root = _folder(tmp_path)
    (root / "val" / "bird").mkdir()
    (root / "val" / "bird" / "x.jpg").write_bytes(b"")
    with pytest.raises(SparsifinerError, match="classes that train/ lacks"):
        image_folder_datasets(str(root), model)
    with pytest.raises(SparsifinerError, match="does not exist"):
        image_folder_datasets(str(tmp_path / "nope"), model)


def test_image_folder_training_transform_takes_timm_arguments_or_none(tmp_path):
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing

    model = create_demo_dense()
    root = _folder(tmp_path)
    train, _ = image_folder_datasets(str(root), model, train_transform={"auto_augment": "rand-m9-mstd0.5-inc1",
                                                                        "re_prob": 0.25, "re_mode": "pixel"})
    kinds = {type(t) for t in train.transform.transforms}
    assert RandAugment in kinds and RandomErasing in kinds
    plain, _ = build_datasets(str(root), model, augment=False, transform={"re_prob": 1.0})
    import random

    torch.manual_seed(0), random.seed(0)
    first = plain[0][0]
    torch.manual_seed(1), random.seed(1)
    assert torch.equal(first, plain[0][0])  # augment off: the same image every time, nothing random
    assert RandomErasing not in {type(t) for t in plain.transform.transforms}
