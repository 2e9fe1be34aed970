"""Build the PyTorch model an export (or a validation) works on.

``load_model(source, attention)`` returns the Sparsifiner in sparse mode (forms
"custom" and "decomposed") or its dense teacher (form "dense"): timm's own model with
timm's attention, rebuilt from the same backbone weights, so every form of one source
shares its backbone. The untrained-model policy is enforced here (see
``sparsifiner.export.settings``).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from sparsifiner.errors import SparsifinerError
from sparsifiner.export.settings import DEMO_ALIAS, ModelSource
from sparsifiner.model import create_sparsifiner, create_timm_model, prune_basis, set_mode, sparse_layers
from sparsifiner.model.io import load_sparsifiner, load_state, read_description
from sparsifiner.model.sparsify import arch_of

# State-dict keys that exist only in the Sparsifiner (the predictors); dropping them
# leaves exactly timm's VisionTransformer state dict.
_PREDICTOR_KEY = ".attn.predictor."


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's CPU RNG inside the block without disturbing the caller's stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def basis_is_pruned(model: nn.Module) -> bool:
    return all(bool(layer.predictor.basis_is_pruned) for layer in sparse_layers(model))


def load_sparsifiner_model(source: ModelSource) -> tuple[nn.Module, bool]:
    """(Sparsifiner in eval and sparse mode with a pruned basis, trained flag)."""
    if source.checkpoint is not None:
        path = Path(source.checkpoint)
        info = read_description(path)  # one-line errors: missing, corrupt, not ours
        if source.img_size is not None and list(info["arch"]["img_size"]) != [source.img_size] * 2:
            raise SparsifinerError(
                f"{path} was built for {info['arch']['img_size']} images, not {source.img_size}: "
                "drop --img-size or resize the checkpoint with sparsifiner.resize_sparsifiner first"
            )
        model = load_sparsifiner(path, mode="sparse")
        return model, True
    with _seeded(source.seed):
        if source.model_name == DEMO_ALIAS:
            from sparsifiner.model.zoo import create_demo_sparsifiner

            if source.img_size is not None or source.pretrained or source.timm_kwargs:
                raise SparsifinerError("--model demo has a fixed size and no pretrained weights: "
                                       "drop --img-size and --pretrained")
            model = create_demo_sparsifiner(source.settings)
        else:
            model = create_sparsifiner(source.model_name, source.settings, pretrained=source.pretrained,
                                       img_size=source.img_size, **source.timm_kwargs)
    # A random predictor: prune its basis on the fly so it becomes a constant. Good for
    # testing the deployment path, meaningless for accuracy (metadata says trained=false).
    prune_basis(model)
    return set_mode(model, "sparse").eval(), False


def require_pruned(model: nn.Module, source: ModelSource) -> None:
    """A checkpoint exported with sparse attention must have gone through phase 2."""
    if not basis_is_pruned(model):
        raise SparsifinerError(
            f"{source.checkpoint} has an unpruned basis (a phase-1 or untrained checkpoint): run phase 2, or "
            "sparsifiner.prune_basis(model) and save it, before exporting sparse attention (or use --attention dense)"
        )


def dense_teacher(model: nn.Module) -> nn.Module:
    """timm's dense model with the Sparsifiner's backbone weights (the teacher)."""
    arch = arch_of(model)
    dense = create_timm_model(arch["model"], img_size=tuple(arch["img_size"]), num_classes=arch["num_classes"],
                              **arch.get("timm_kwargs", {}))
    state = {k: v for k, v in model.state_dict().items() if _PREDICTOR_KEY not in k}
    load_state(dense, state, "the Sparsifiner backbone")
    dense.sparsifiner_arch = arch
    return dense.eval()


def load_model(source: ModelSource, attention: str) -> tuple[nn.Module, nn.Module, bool]:
    """(model to run, the Sparsifiner it comes from, trained flag) for an attention form."""
    sparse, trained = load_sparsifiner_model(source)
    if attention == "dense":
        return dense_teacher(sparse), sparse, trained
    if source.checkpoint is not None:
        require_pruned(sparse, source)
    return sparse, sparse, trained


def data_config(model: nn.Module) -> dict:
    """timm's preprocessing (mean, std, interpolation, crop) at the model's input size."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    # The pretrained config names timm's default size; the model may be built for another.
    height, width = model.patch_embed.img_size
    config["input_size"] = (model.patch_embed.proj.in_channels, int(height), int(width))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}
