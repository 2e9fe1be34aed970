"""One way to get a model: a ``ModelSource`` and the functions that load it.

Every command that needs a PyTorch model names it the same way: a Sparsifiner
checkpoint, or a timm model name made into a Sparsifiner (random weights, or timm's
under ``pretrained``; ``demo`` is the bundled digits ViT), seeded so the same random
model can be rebuilt later (validation does, from an ONNX file's metadata).

* ``load_sparsifiner_model(source)``: the Sparsifiner in eval and sparse mode, and
  whether it is trained.
* ``load_model(source, attention)``: what an export form runs: the Sparsifiner
  ("custom", "decomposed") or its dense teacher ("dense").
* ``load_checkpoint(path)``: a dense (teacher) or Sparsifiner checkpoint, and its kind.
* ``dense_model(arch, state)``: timm's dense model from an architecture description,
  optionally with the backbone weights of a (dense or Sparsifiner) state dict.

Untrained-model policy: a checkpoint must carry a pruned basis (phase 2 done, or
``sparsifiner.prune_basis`` run and saved) to run sparse attention in an export; a
model made from a timm name has a random predictor whose basis is pruned on the fly,
which is for deployment testing only (``trained`` is False).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from sparsifiner.errors import SparsifinerError
from sparsifiner.model.zoo import DEMO_NAME
from sparsifiner.settings import SparsifinerSettings

# State-dict keys that exist only in the Sparsifiner (the predictors); dropping them
# leaves exactly timm's VisionTransformer state dict.
PREDICTOR_KEY = ".attn.predictor."


@dataclass(frozen=True)
class ModelSource:
    """Where the PyTorch model comes from; exactly one of checkpoint and model_name.

    model_name: a timm ViT name, or "demo" (the bundled digits ViT).
    pretrained: timm's pretrained backbone weights (needs network or timm's cache).
    seed: seed of the random weights (predictor, and the backbone unless pretrained).
    img_size: build the timm model at this size (checkpoints: must match).
    settings: Sparsifiner settings for model_name (checkpoints carry their own).
    timm_kwargs: extra timm kwargs for model_name (e.g. {"depth": 2} in tests).
    """

    checkpoint: Optional[str] = None
    model_name: Optional[str] = None
    pretrained: bool = False
    seed: int = 0
    img_size: Optional[int] = None
    settings: Optional[SparsifinerSettings] = None
    timm_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if (self.checkpoint is None) == (self.model_name is None):
            raise SparsifinerError("give exactly one of --checkpoint PATH or --model NAME")
        if self.checkpoint is not None and (self.settings is not None or self.pretrained or self.timm_kwargs):
            raise SparsifinerError(
                "a checkpoint carries its own settings and weights: drop the settings flags and --pretrained"
            )
        if self.model_name == DEMO_NAME and (self.img_size is not None or self.pretrained or self.timm_kwargs):
            raise SparsifinerError("--model demo has a fixed size and no pretrained weights: "
                                   "drop --img-size and --pretrained")

    @property
    def kind(self) -> str:
        return "checkpoint" if self.checkpoint is not None else "model"

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["settings"] = None if self.settings is None else self.settings.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSource":
        data = dict(data)
        if data.get("settings") is not None:
            data["settings"] = SparsifinerSettings.from_dict(data["settings"], saved=True)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def as_source(source: Union[ModelSource, str], settings: Optional[SparsifinerSettings] = None,
              img_size: Optional[int] = None) -> ModelSource:
    """A ModelSource as is, or one made from a timm model name, settings and image size."""
    if isinstance(source, ModelSource):
        if settings is not None or img_size is not None:
            raise SparsifinerError("settings and img_size go into the ModelSource, not beside it")
        return source
    return ModelSource(model_name=source, settings=settings, img_size=img_size)


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's CPU RNG inside the block without disturbing the caller's stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def basis_is_pruned(model: nn.Module) -> bool:
    from sparsifiner.model.sparsify import sparse_layers

    return all(bool(layer.predictor.basis_is_pruned) for layer in sparse_layers(model))


def load_sparsifiner_model(source: ModelSource, *, resize: bool = False,
                           prune_random: bool = True) -> tuple[nn.Module, bool]:
    """(Sparsifiner in eval and sparse mode, trained flag).

    resize: a checkpoint built for another image size than ``source.img_size`` is
        resampled (``resize_sparsifiner``) instead of refused.
    prune_random: prune a random predictor's basis so it becomes a constant (export
        needs that; ``info`` reports the unpruned model).
    """
    from sparsifiner.model.io import load_sparsifiner, read_description
    from sparsifiner.model.sparsify import create_sparsifiner, prune_basis, set_mode

    if source.checkpoint is not None:
        path = Path(source.checkpoint)
        info = read_description(path)  # one-line errors: missing, corrupt, not ours
        model = load_sparsifiner(path, mode="sparse")
        if source.img_size is not None and list(info["arch"]["img_size"]) != [source.img_size] * 2:
            if not resize:
                raise SparsifinerError(
                    f"{path} was built for {info['arch']['img_size']} images, not {source.img_size}: "
                    "drop --img-size or resize the checkpoint with sparsifiner.resize_sparsifiner first"
                )
            from sparsifiner.model.resize import resize_sparsifiner

            resize_sparsifiner(model, source.img_size)
        return model, True
    with _seeded(source.seed):
        if source.model_name == DEMO_NAME:
            from sparsifiner.model.zoo import create_demo_sparsifiner

            model = create_demo_sparsifiner(source.settings)
        else:
            model = create_sparsifiner(source.model_name, source.settings, pretrained=source.pretrained,
                                       img_size=source.img_size, **source.timm_kwargs)
    if prune_random:
        prune_basis(model)
    return set_mode(model, "sparse").eval(), False


def require_pruned(model: nn.Module, source: ModelSource) -> None:
    """A checkpoint run with sparse attention outside training must have gone through phase 2."""
    if not basis_is_pruned(model):
        raise SparsifinerError(
            f"{source.checkpoint} has an unpruned basis (a phase-1 or untrained checkpoint): run phase 2, or "
            "sparsifiner.prune_basis(model) and save it, before exporting sparse attention (or use --attention dense)"
        )


def dense_model(arch: dict, state: Optional[dict] = None, source: str = "the weights") -> nn.Module:
    """timm's dense model of ``arch`` (name, image size, classes, timm kwargs), with the backbone
    weights of ``state`` (a dense or Sparsifiner state dict) when given; records ``sparsifiner_arch``."""
    from sparsifiner.model.io import load_state
    from sparsifiner.model.sparsify import create_timm_model

    model = create_timm_model(arch["model"], img_size=tuple(arch["img_size"]), num_classes=arch["num_classes"],
                              **arch.get("timm_kwargs", {}))
    model.sparsifiner_arch = {"model": arch["model"], "img_size": list(model.patch_embed.img_size),
                              "num_classes": model.num_classes, "timm_kwargs": dict(arch.get("timm_kwargs", {}))}
    if state is not None:
        load_state(model, {k: v for k, v in state.items() if PREDICTOR_KEY not in k}, source)
    return model


def dense_teacher(model: nn.Module) -> nn.Module:
    """timm's dense model with a Sparsifiner's backbone weights (the teacher), in eval mode."""
    from sparsifiner.model.sparsify import arch_of

    return dense_model(arch_of(model), model.state_dict(), "the Sparsifiner backbone").eval()


def load_model(source: ModelSource, attention: str) -> tuple[nn.Module, nn.Module, bool]:
    """(model to run, the Sparsifiner it comes from, trained flag) for an export form."""
    sparse, trained = load_sparsifiner_model(source)
    if attention == "dense":
        return dense_teacher(sparse), sparse, trained
    if source.checkpoint is not None:
        require_pruned(sparse, source)
    return sparse, sparse, trained


def load_checkpoint(path, mode: Optional[str] = "sparse") -> tuple[nn.Module, str]:
    """(model in eval mode, "dense" or "sparsifiner") from a checkpoint written by sparsifiner."""
    from sparsifiner.model.io import DENSE_FORMAT, load_sparsifiner, read_info, read_weights

    info = read_info(path)
    if info is None:
        raise SparsifinerError(f"{path} has no description: pass a checkpoint written by sparsifiner train")
    if info.get("format") == DENSE_FORMAT:
        return dense_model(info["arch"], read_weights(path), str(path)).eval(), "dense"
    return load_sparsifiner(path, mode=mode), "sparsifiner"
