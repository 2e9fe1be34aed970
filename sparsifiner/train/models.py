"""The models each phase starts from: fresh, pretrained or local dense teachers, and students.

Every model carries ``sparsifiner_arch`` (timm name, image size, classes, extra timm
kwargs) so its checkpoint says how to rebuild it. A checkpoint of another
architecture than the run's ``--model`` is refused with a one-line error before any
weights move.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

from torch import nn

from sparsifiner.errors import SparsifinerError
from sparsifiner.settings import SparsifinerSettings
from sparsifiner.model.io import DENSE_FORMAT, read_info, read_weights
from sparsifiner.model.zoo import DEMO_ARCH, DEMO_NAME
from sparsifiner.train.settings import TrainSettings

def expected_arch(settings: TrainSettings) -> dict:
    """The part of the architecture a checkpoint must share with the run (name, kwargs, size)."""
    if settings.model == DEMO_NAME:
        return {"model": DEMO_ARCH["model"], "timm_kwargs": dict(DEMO_ARCH["timm_kwargs"]),
                "img_size": list(DEMO_ARCH["img_size"])}
    arch = {"model": settings.model, "timm_kwargs": dict(settings.timm_kwargs)}
    if settings.img_size is not None:
        arch["img_size"] = [settings.img_size] * 2
    return arch


def check_arch(found: dict, settings: TrainSettings, source: str) -> None:
    """Raise if a checkpoint's architecture is not the run's."""
    want = expected_arch(settings)
    for key, value in want.items():
        have = found.get(key, {} if key == "timm_kwargs" else None)
        if have != value:
            raise SparsifinerError(
                f"{source} is a {found.get('model')} {found.get('timm_kwargs') or ''} model, not the run's "
                f"{settings.model} ({key}: {have} != {value}): pass a checkpoint of the same architecture or the "
                "matching --model")


def build_dense(settings: TrainSettings, num_classes: Optional[int], pretrained: bool = False) -> nn.Module:
    """A fresh (or timm-pretrained) dense ViT of the run's architecture with ``num_classes`` outputs
    (None: the model's own head, e.g. the 1,000 ImageNet classes of pretrained weights)."""
    from sparsifiner.model.sparsify import check_supported, create_timm_model

    if settings.model == DEMO_NAME:
        if pretrained:
            raise SparsifinerError("there are no pretrained weights for the demo model: train it with --phase teacher")
        from sparsifiner.model.zoo import create_demo_dense

        return create_demo_dense(num_classes or DEMO_ARCH["num_classes"])
    model = create_timm_model(settings.model, pretrained=pretrained, img_size=settings.img_size,
                              num_classes=num_classes, **settings.timm_kwargs)
    kwargs, name = dict(settings.timm_kwargs), settings.model
    check_supported(model)
    model.sparsifiner_arch = {"model": name, "img_size": list(model.patch_embed.img_size),
                              "num_classes": model.num_classes, "timm_kwargs": kwargs}
    return model


def load_teacher(path: Path, settings: TrainSettings, num_classes: int) -> nn.Module:
    """A dense model from local weights: our dense or Sparsifiner checkpoints, or a timm state dict."""
    info, state = read_info(path), read_weights(path)
    if info is None:  # a plain timm state dict: build the run's architecture around it
        model = build_dense(settings, _head_size(state, num_classes))
        from sparsifiner.model.io import load_state

        load_state(model, state, str(path))
        return model
    if info.get("format") not in (DENSE_FORMAT, "sparsifiner-model"):
        raise SparsifinerError(f"{path} has format {info.get('format')!r}: pass a model checkpoint")
    check_arch(info["arch"], settings, str(path))
    from sparsifiner.model.source import dense_model

    return dense_model(info["arch"], state, str(path))


def _head_size(state: dict, default: int) -> int:
    head = state.get("head.weight")
    return int(head.shape[0]) if head is not None else default


def make_student(teacher: nn.Module, settings: SparsifinerSettings, mode: str) -> nn.Module:
    """A Sparsifiner copy of ``teacher`` (backbone weights shared by value, new predictor)."""
    from sparsifiner.model.sparsify import sparsify

    student = sparsify(copy.deepcopy(teacher), settings, mode=mode)
    student.sparsifiner_arch = dict(teacher.sparsifiner_arch)
    return student


def load_student(path: Path, settings: TrainSettings, mode: str = "sparse") -> nn.Module:
    """A phase-1 (or any Sparsifiner) checkpoint rebuilt with the run's Sparsifiner settings.

    Keep rate, budget and thresholds may differ from the checkpoint's (a phase-1
    predictor serves any budget); structural settings (rank, reduction) must match.
    """
    from sparsifiner.model.io import load_state
    from sparsifiner.model.sparsify import create_sparsifiner

    info, state = read_info(path), read_weights(path)
    if info is None or info.get("format") != "sparsifiner-model":
        raise SparsifinerError(f"{path} is not a Sparsifiner checkpoint: phase 2 starts from a phase-1 checkpoint "
                               "(run --phase 1 first)")
    arch = info["arch"]
    check_arch(arch, settings, str(path))
    model = create_sparsifiner(arch["model"], settings.sparsifiner, img_size=tuple(arch["img_size"]),
                               num_classes=arch["num_classes"], mode=mode, **arch.get("timm_kwargs", {}))
    load_state(model, state, str(path))
    return model


def freeze(model: nn.Module, trainable: Optional[list] = None) -> None:
    """requires_grad only for the parameters in ``trainable`` (all when None)."""
    keep = None if trainable is None else {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(keep is None or id(p) in keep)


def param_groups(params: list[tuple[str, nn.Parameter]], weight_decay: float,
                 no_decay_ids: frozenset = frozenset()) -> list[dict]:
    """AdamW groups: no weight decay for 1-D parameters (biases, norms), tokens and ``no_decay_ids``."""
    decay, plain = [], []
    for name, p in params:
        skip = p.ndim <= 1 or name.endswith(("cls_token", "pos_embed")) or id(p) in no_decay_ids
        (plain if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]

