"""Figure 3 of the supplementary: the pruned basis W_up of the first blocks on the patch grid.

Each of the R basis vectors of a block is a row of W_up [R, N]: its N entries are
drawn as a tile with the patch grid below and the CLS entry in the extra top-left
cell (outlined in red). One row of tiles per block, titled with the block's basis
sparsity. Pruned entries are white, kept ones blue (red/blue for a signed basis); the
grey lines separate the tiles.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def basis_tiles(model: nn.Module, blocks: int = 6) -> list[tuple[int, np.ndarray, float]]:
    """(block, mosaic [(gh+1), R*(gw+1)], sparsity) for the first ``blocks`` blocks."""
    from sparsifiner.model.sparsify import sparse_layers

    gh, gw = model.patch_embed.grid_size
    out = []
    for i, layer in enumerate(sparse_layers(model)[:blocks]):
        basis = layer.predictor.sparse_basis().float().cpu()
        prefix = layer.num_prefix_tokens
        rank = basis.shape[0]
        mosaic = np.full((gh + 1, rank * (gw + 1) - 1), np.nan)
        for r in range(rank):
            x0 = r * (gw + 1)
            mosaic[0, x0] = float(basis[r, :prefix].sum())
            mosaic[1:, x0:x0 + gw] = basis[r, prefix:].reshape(gh, gw).numpy()
        out.append((i, mosaic, float((basis == 0).float().mean())))
    return out


def basis_figure(model: nn.Module, path: Path, blocks: int = 6, title: str = "") -> Path:
    """Write the basis figure of the first ``blocks`` blocks to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    tiles = basis_tiles(model, blocks)
    gh, gw = model.patch_embed.grid_size
    rank = (tiles[0][1].shape[1] + 1) // (gw + 1)
    fig, axes = plt.subplots(len(tiles), 1, figsize=(min(0.5 * rank * (gw + 1) / 4, 24), 1.25 * len(tiles) + 0.6),
                             squeeze=False)
    signed = any(np.nanmin(m) < 0 for _, m, _ in tiles)
    if signed:
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")
    else:  # kept entries start at a visible blue; pruned (exact) zeros fall "under" and show white
        from matplotlib.colors import ListedColormap

        cmap = ListedColormap(plt.get_cmap("Blues")(np.linspace(0.2, 1.0, 256))).with_extremes(
            bad="#dddddd", under="white")
    for ax, (i, mosaic, sparsity) in zip(axes[:, 0], tiles):
        vmax = max(float(np.nanmax(np.abs(mosaic))), 1e-8)
        ax.imshow(mosaic, cmap=cmap, vmin=-vmax if signed else 1e-12, vmax=vmax, interpolation="nearest")
        for r in range(rank):
            ax.add_patch(Rectangle((r * (gw + 1) - 0.5, -0.5), 1, 1, fill=False, color="red", lw=0.6))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"block {i}\n{100 * sparsity:.1f}% zero", fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(title or f"pruned basis W_up: {rank} vectors per block on the {gh}x{gw} patch grid "
                          "(CLS entry top-left, red)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
