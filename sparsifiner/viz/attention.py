"""Figures 1/2 of the supplementary: one query patch's mask, sparse and full attention.

For an image and a query patch, each chosen block gets one row; each head gets three
panels over the patch grid: the connectivity mask the predictor chose (the budget's
keys, in yellow), the sparse attention the model used, and the full (dense)
attention of the same q and k. The CLS key is not on the grid: its share of the
row's probability is written in the panel title. With tile-shared selection
(settings.selection "tile" or "two_level") the query's tile is outlined in white on the
panels: every query of that tile chose from the same keys. One PNG per budget.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from sparsifiner.errors import SparsifinerError

DEFAULT_BLOCKS = (3, 4, 5)
DEFAULT_HEADS = 4


def clamp_blocks(blocks: Optional[Sequence[int]], depth: int) -> list[int]:
    """The requested blocks that exist (default 3-5), or the last ones when none do."""
    wanted = list(blocks) if blocks else list(DEFAULT_BLOCKS)
    kept = [b for b in wanted if 0 <= b < depth]
    return kept or list(range(max(0, depth - 3), depth))


def default_budgets(budget: int) -> list[int]:
    """The model's budget and a tighter one in the paper's 49 : 20 ratio."""
    small = max(1, round(budget * 20 / 49))
    return [budget] if small == budget else [budget, small]


@torch.no_grad()
def attention_maps(model: nn.Module, image: torch.Tensor, query: tuple[int, int], budget: int,
                   blocks: Sequence[int], heads: int) -> list[dict]:
    """Per block: mask, sparse and dense attention rows of the query, on the patch grid [heads, gh, gw]."""
    from sparsifiner.model.sparsify import apply_settings, collect_aux, set_budget, set_mode, settings_of, sparse_layers

    layers = sparse_layers(model)
    gh, gw = model.patch_embed.grid_size
    row, col = query
    if not (0 <= row < gh and 0 <= col < gw):
        raise SparsifinerError(f"query patch ({row}, {col}) is outside the {gh}x{gw} patch grid: use 0 <= row < {gh}, "
                               f"0 <= col < {gw}")
    if not 1 <= budget <= layers[0].num_tokens:
        raise SparsifinerError(f"budget {budget} must be between 1 and {layers[0].num_tokens}")
    prefix = layers[0].num_prefix_tokens
    token = prefix + row * gw + col
    saved_settings, saved_modes = settings_of(model), [layer.mode for layer in layers]
    was_training = model.training
    model.eval()
    try:
        set_budget(model, budget)
        set_mode(model, "sparse")
        with collect_aux(model) as records:
            model(image.unsqueeze(0).to(next(model.parameters()).device))
    finally:
        apply_settings(model, saved_settings)
        for layer, mode in zip(layers, saved_modes):
            layer.set_mode(mode)
        model.train(was_training)
    out = []
    for b in blocks:
        aux = records[b]
        h = min(heads, aux["attn"].shape[1])
        mask = aux["mask"][0, :h, token - prefix].float()
        sparse = aux["sparse_attn"][0, :h, token].float()
        dense = aux["attn"][0, :h, token].float()
        out.append({
            "block": b,
            "mask": mask[:, prefix:].reshape(h, gh, gw).cpu(),
            "sparse": sparse[:, prefix:].reshape(h, gh, gw).cpu(),
            "dense": dense[:, prefix:].reshape(h, gh, gw).cpu(),
            "cls": {"mask": mask[:, :prefix].sum(-1).cpu(), "sparse": sparse[:, :prefix].sum(-1).cpu(),
                    "dense": dense[:, :prefix].sum(-1).cpu()},
            "recall": float((dense * aux["mask"][0, :h, token - prefix].float()).sum(-1).mean()),
        })
    return out


def attention_figure(model: nn.Module, image: torch.Tensor, display: torch.Tensor, query: tuple[int, int],
                     budget: int, path: Path, blocks: Optional[Sequence[int]] = None,
                     heads: int = DEFAULT_HEADS) -> Path:
    """Write the mask / sparse / full attention figure of one query and budget to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from sparsifiner.model.sparsify import sparse_layers

    layers = sparse_layers(model)
    blocks = clamp_blocks(blocks, len(layers))
    heads = max(1, min(heads, layers[0].num_heads))
    maps = attention_maps(model, image, query, budget, blocks, heads)
    gh, gw = model.patch_embed.grid_size
    selection = layers[0].settings.selection
    tile = None
    if selection != "row":  # the query's tile on the grid: (top, left, height, width)
        th, tw = layers[0].settings.tile_rows, layers[0].settings.tile_cols
        top, left = query[0] // th * th, query[1] // tw * tw
        tile = (top, left, min(th, gh - top), min(tw, gw - left))
    cols = 1 + 3 * heads
    fig, axes = plt.subplots(len(blocks), cols, figsize=(1.9 * cols, 2.35 * len(blocks) + 0.3), squeeze=False)
    img = display.permute(1, 2, 0).clamp(0, 1).numpy()
    ph, pw = img.shape[0] / gh, img.shape[1] / gw
    for r, entry in enumerate(maps):
        ax = axes[r, 0]
        ax.imshow(img)
        ax.add_patch(Rectangle((query[1] * pw - 0.5, query[0] * ph - 0.5), pw, ph, fill=False, color="red", lw=1.5))
        ax.set_title(f"block {entry['block']}\nquery ({query[0]},{query[1]})", fontsize=8)
        for h in range(heads):
            for j, kind in enumerate(("mask", "sparse", "dense")):
                ax = axes[r, 1 + 3 * h + j]
                data = entry[kind][h].numpy()
                ax.imshow(data, cmap="viridis" if kind == "mask" else "inferno", vmin=0,
                          vmax=1 if kind == "mask" else max(float(data.max()), 1e-6), interpolation="nearest")
                ax.add_patch(Rectangle((query[1] - 0.5, query[0] - 0.5), 1, 1, fill=False, color="red", lw=1))
                if tile is not None:
                    ax.add_patch(Rectangle((tile[1] - 0.5, tile[0] - 0.5), tile[3], tile[2], fill=False,
                                           color="white", lw=1, ls="--"))
                name = {"mask": "mask", "sparse": "sparse attn", "dense": "full attn"}[kind]
                ax.set_title(f"h{h} {name}\nCLS {float(entry['cls'][kind][h]):.2f}", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    recall = sum(m["recall"] for m in maps) / len(maps)
    what = f"budget {budget}" if selection == "row" else (
        f"{selection} selection, {layers[0].settings.tile_rows}x{layers[0].settings.tile_cols} tiles, "
        f"{layers[0].keys_per_row} keys per query (budget {budget}, tile budget {layers[0].tile_budget})")
    fig.suptitle(f"{what} of {layers[0].num_tokens} keys; mass recall of the mask {100 * recall:.1f}% "
                 f"(mean over shown heads and blocks)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
