"""Draw the figure set of one Sparsifiner checkpoint (attention per budget, basis, curves),
with ``figures.json`` beside the PNGs naming what was drawn and how."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from sparsifiner.artifacts import write_json
from sparsifiner.errors import SparsifinerError


def load_image(model, data: Optional[str], index: int, image: Optional[str]) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(model input [3, H, W], displayable [3, H, W] in [0, 1], description) of the chosen image."""
    from sparsifiner.data import build_datasets, model_data_config

    cfg = model_data_config(model)
    mean = torch.tensor(cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(cfg["std"]).view(3, 1, 1)
    if image is not None:
        from PIL import Image
        from timm.data import create_transform

        try:
            with Image.open(image) as img:
                pil = img.convert("RGB")
        except Exception:
            raise SparsifinerError(f"cannot read image {image}: pass a readable image file") from None
        x = create_transform(**cfg, is_training=False)(pil)
        label = Path(image).name
    else:
        _, val = build_datasets(data or "digits", model, augment=False)
        if not 0 <= index < len(val):
            raise SparsifinerError(f"--index {index} is outside the val set (0..{len(val) - 1})")
        x, target = val[index]
        label = f"val image {index} (class {target})"
    return x, (x * std + mean).clamp(0, 1), label


def write_figures(checkpoint: str, output: str, *, data: Optional[str] = "digits", index: int = 0,
                  image: Optional[str] = None, query: Optional[tuple[int, int]] = None,
                  blocks: Optional[Sequence[int]] = None, heads: int = 4, budgets: Optional[Sequence[int]] = None,
                  metrics: Optional[str] = None, basis_blocks: int = 6, prefix: str = "") -> dict:
    """Write the PNGs into ``output``; returns {"attention": [...], "basis": path, "curves": path or None}."""
    from sparsifiner.model.io import load_sparsifiner
    from sparsifiner.model.sparsify import budget_of
    from sparsifiner.viz.attention import attention_figure, default_budgets
    from sparsifiner.viz.basis import basis_figure
    from sparsifiner.viz.curves import curves_figure

    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SparsifinerError(f"cannot create {out} ({exc.strerror}): choose a writable --output") from None
    model = load_sparsifiner(checkpoint, mode="sparse")
    gh, gw = model.patch_embed.grid_size
    query = query if query is not None else (gh // 2, gw // 2)
    x, display, label = load_image(model, data, index, image)
    result: dict = {"image": label, "query": list(query), "attention": []}
    for budget in budgets or default_budgets(budget_of(model)):
        path = out / f"{prefix}attention_b{budget}.png"
        result["attention"].append(str(attention_figure(model, x, display, query, budget, path, blocks, heads)))
    result["basis"] = str(basis_figure(model, out / f"{prefix}basis.png", basis_blocks))
    metrics_path = Path(metrics) if metrics else Path(checkpoint).parent / "metrics.jsonl"
    result["curves"] = str(curves_figure(metrics_path, out / f"{prefix}curves.png")) if metrics_path.exists() else None
    result["settings"] = {"checkpoint": str(checkpoint), "data": data, "index": index, "image": image,
                          "blocks": list(blocks) if blocks else None, "heads": heads,
                          "budgets": list(budgets) if budgets else None, "metrics": str(metrics_path)}
    write_json(out / f"{prefix}figures.json", result)
    return result
