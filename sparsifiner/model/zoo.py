"""Named model configurations: the small ViT of the bundled digits demo.

The demo ViT sees 32x32 upsampled digits in 4x4 patches: 64 patch tokens plus CLS,
N = 65, so n_down = 32 fits and keep_rate 0.25 gives a budget of 16. It is a timm
``vit_tiny_patch16_224`` with its size overridden, so every timm code path applies.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from sparsifiner.settings import DEMO_NAME, SparsifinerSettings  # noqa: F401  (DEMO_NAME: the demo's public name)

if TYPE_CHECKING:
    from torch import nn

# The timm architecture the demo model is built from.
DEMO_TIMM_MODEL = "vit_tiny_patch16_224"
DEMO_IMG_SIZE = 32
DEMO_NUM_CLASSES = 10
# Extra timm kwargs; the width, depth and heads are the demo's own, head_dim = 64.
DEMO_TIMM_KWARGS = {"patch_size": 4, "embed_dim": 128, "depth": 6, "num_heads": 2}
DEMO_ARCH = {"model": DEMO_TIMM_MODEL, "img_size": [DEMO_IMG_SIZE] * 2, "num_classes": DEMO_NUM_CLASSES,
             "timm_kwargs": DEMO_TIMM_KWARGS}


def create_demo_dense(num_classes: int = DEMO_NUM_CLASSES) -> nn.Module:
    """The dense demo ViT (the teacher), randomly initialised."""
    from sparsifiner.model.source import dense_model

    return dense_model({**DEMO_ARCH, "num_classes": num_classes})


def create_demo_sparsifiner(settings: Optional[SparsifinerSettings] = None, mode: str = "sparse") -> nn.Module:
    """The demo ViT made into a Sparsifiner (random weights)."""
    from sparsifiner.model.sparsify import create_sparsifiner

    return create_sparsifiner(DEMO_TIMM_MODEL, settings, img_size=DEMO_IMG_SIZE, num_classes=DEMO_NUM_CLASSES,
                              mode=mode, **DEMO_TIMM_KWARGS)
