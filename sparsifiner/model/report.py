"""``sparsifiner info``: what a Sparsifiner model is made of, as a dict and a table."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from sparsifiner.settings import SparsifinerSettings

if TYPE_CHECKING:
    from sparsifiner.model.source import ModelSource


def model_info(source: Union[ModelSource, str], settings: Optional[SparsifinerSettings] = None, *,
               img_size: Optional[int] = None) -> dict:
    """Blocks, heads, tokens, budget, predictor shapes and parameter counts.

    source: a ModelSource, or a timm model name (with ``settings`` and ``img_size``); a
    checkpoint at another image size is resized.
    """
    from sparsifiner.model.source import as_source, load_sparsifiner_model
    from sparsifiner.model.sparsify import count_parameters, sparse_layers

    model, _ = load_sparsifiner_model(as_source(source, settings, img_size), resize=True, prune_random=False)
    model_name = model.sparsifiner_arch["model"]
    layers = sparse_layers(model)
    first = layers[0]
    return {
        "model": model_name,
        "img_size": list(model.patch_embed.img_size),
        "patch_size": list(model.patch_embed.patch_size),
        "blocks": len(layers),
        "embed_dim": model.embed_dim,
        "heads": first.num_heads,
        "head_dim": first.head_dim,
        "tokens": first.num_tokens,
        "patch_tokens": model.patch_embed.num_patches,
        "budget": first.budget,
        "keep_rate": model.sparsifiner_settings.keep_rate,
        "n_down": model.sparsifiner_settings.n_down,
        "reduced_dim": first.predictor.reduced_dim,
        "selection": model.sparsifiner_settings.selection,
        "tile": (None if first.selection is None else
                 {"rows": first.selection.tile_rows, "cols": first.selection.tile_cols, "budget": first.tile_budget,
                  "grid": list(first.grid_size), "keys_per_row": first.keys_per_row}),
        "mode": first.mode,
        "basis_pruned": all(bool(layer.predictor.basis_is_pruned) for layer in layers),
        "parameters": count_parameters(model),
        "settings": model.sparsifiner_settings.to_dict(),
    }


def format_info(data: dict) -> str:
    p = data["parameters"]
    rows = [
        ("model", data["model"]),
        ("image size", "x".join(map(str, data["img_size"])) + f" (patch {data['patch_size'][0]})"),
        ("blocks", data["blocks"]),
        ("heads x head dim", f"{data['heads']} x {data['head_dim']} (embed {data['embed_dim']})"),
        ("tokens N", f"{data['tokens']} (1 CLS + {data['patch_tokens']} patches)"),
        ("budget B", f"{data['budget']} keys per query (keep rate {data['keep_rate']})"),
        ("predictor", f"rank R = {data['n_down']}, reduced dim d_r = {data['reduced_dim']}"),
        ("selection", "per query (row)" if not data.get("tile") else
         f"{data['selection']}: {data['tile']['rows']}x{data['tile']['cols']} tiles of the "
         f"{data['tile']['grid'][0]}x{data['tile']['grid'][1]} grid, C = {data['tile']['budget']} keys per tile, "
         f"{data['tile']['keys_per_row']} per query"),
        ("mode", data["mode"] + ("" if data["basis_pruned"] else " (basis not pruned yet)")),
        ("parameters", f"backbone {p['backbone'] / 1e6:.2f} M + predictor {p['predictor'] / 1e6:.3f} M "
                       f"= {p['total'] / 1e6:.2f} M"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
