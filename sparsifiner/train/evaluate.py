"""Evaluation: top-1/top-5 plus the method's own metrics, on one process or sharded.

For a Sparsifiner model, one pass with the per-block intermediates recorded gives,
beside accuracy:
  basis sparsity        share of zeros in the (pruned) basis W_up, mean over blocks;
  coefficient sparsity  share of zeros in the (pruned) coefficients A_down;
  empty coef rows       share of query rows whose coefficients are all pruned: their
                        scores are all zero and the top-B falls back to the lowest key
                        indices (threshold pruning of a flat softmax row does this);
  mask density          share of the N x N attention map the mask keeps (the CLS row
                        counts as dense);
  attention-mass recall share of each non-CLS row's dense attention probability that
                        falls inside the predicted mask, averaged over rows, heads,
                        blocks and images; ``oracle_recall`` is the same for the best
                        possible mask of the same size (each row's top-K dense
                        probabilities, K = keys per row: B, or C with tile selection);
                        ``row_oracle_recall`` for the per-row oracle at the budget B;
  selection recall      share of each row's own top-B keys (by its predicted scores) that
                        the mask keeps: 1 for row selection, below 1 where tile-shared
                        selection (settings.selection) departs from per-query connectivity.
The intermediates of each block are reduced as soon as the block has run, so memory
stays at one block's worth. Counts are summed over processes, so sharded evaluation
is exact.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from sparsifiner.errors import SparsifinerError
from sparsifiner.train.distributed import DistInfo, all_reduce_sum
from sparsifiner.train.losses import attention_distillation

METRIC_KEYS = ("top1", "top5", "basis_sparsity", "coef_sparsity", "mask_density", "recall", "oracle_recall",
               "row_oracle_recall", "selection_recall")


def is_sparsifiner(model: nn.Module) -> bool:
    from sparsifiner.layers import SparsifinerAttention

    return any(isinstance(m, SparsifinerAttention) for m in model.modules())


@torch.no_grad()
def basis_sparsity(model: nn.Module) -> float:
    """Share of zero entries of each block's pruned basis (as used in sparse mode), averaged."""
    from sparsifiner.model.sparsify import sparse_layers

    values = [float((layer.predictor.sparse_basis() == 0).float().mean()) for layer in sparse_layers(model)]
    return sum(values) / len(values)


class _BlockStats:
    """Sums of the method metrics over blocks, rows and images."""

    NAMES = ("recall", "oracle", "row_oracle", "selection", "rows", "coef_zero", "coef_total", "empty_rows",
             "mask_kept", "mask_total", "attn_loss")

    def __init__(self, attn_loss: Optional[str]):
        self.sums = dict.fromkeys(self.NAMES, 0.0)
        self.attn_loss = attn_loss

    def add(self, aux: dict, layer) -> None:
        from sparsifiner.ops import topk_mask

        budget, keys = layer.budget, layer.keys_per_row
        rows = aux["mask"].shape[-2]
        dense = aux["attn"][..., -rows:, :].float()
        n = dense.shape[-1]
        mask = aux["mask"]
        s = self.sums
        s["recall"] += float((dense * mask).sum())
        row_oracle = float(torch.topk(dense, budget, dim=-1).values.sum())
        s["row_oracle"] += row_oracle
        s["oracle"] += row_oracle if keys == budget else float(torch.topk(dense, keys, dim=-1).values.sum())
        if layer.selection is None:
            s["selection"] += dense[..., 0].numel() * budget
        else:
            s["selection"] += float((topk_mask(aux["scores"].detach(), budget) & mask).sum())
        s["rows"] += dense[..., 0].numel()
        s["coef_zero"] += float((aux["coef"] == 0).sum())
        s["coef_total"] += aux["coef"].numel()
        s["empty_rows"] += float((aux["coef"] == 0).all(-1).sum())
        prefix = n - rows
        maps = dense[..., 0, 0].numel()
        s["mask_kept"] += float(mask.sum()) + prefix * n * maps
        s["mask_total"] += n * n * maps
        if self.attn_loss is not None:
            s["attn_loss"] += float(attention_distillation([aux], self.attn_loss, "sum"))


@torch.no_grad()
def evaluate_model(model: nn.Module, loader, info: Optional[DistInfo] = None, *, method_metrics: bool = True,
                   attn_loss: Optional[str] = None, amp_dtype: Optional[torch.dtype] = None,
                   progress: bool = False, desc: str = "eval") -> dict:
    """Accuracy (percent) and, for Sparsifiner models, the method metrics (shares in [0, 1]).

    attn_loss: a criterion ("mse", "kl") to also report the phase-1 distillation loss
    as ``attn_loss``: summed over heads, rows and keys, averaged over blocks and
    images (batch-size independent; the model should be in dense mode for it).
    """
    from tqdm import tqdm

    from sparsifiner.model.sparsify import collect_aux, sparse_layers

    info = info or DistInfo(device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    sparse = method_metrics and is_sparsifiner(model)
    stats = _BlockStats(attn_loss)
    counts = [0.0, 0.0, 0.0, 0.0]  # top1, top5, images, ce sum
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, disable=not (progress and info.is_main), dynamic_ncols=True)
    for images, labels in bar:
        images = images.to(info.device, non_blocking=True)
        labels = labels.to(info.device, non_blocking=True)
        with torch.autocast(info.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            if sparse:
                with collect_aux(model) as records:
                    hooks = [layer.register_forward_hook(
                        lambda mod, inp, out, records=records: stats.add(records.pop(), mod))
                        for layer in sparse_layers(model)]
                    try:
                        logits = model(images)
                    finally:
                        for hook in hooks:
                            hook.remove()
            else:
                logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        hit = top == labels[:, None]
        counts[0] += float(hit[:, 0].sum())
        counts[1] += float(hit.any(-1).sum())
        counts[2] += labels.numel()
        counts[3] += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
    names = list(stats.NAMES)
    totals = all_reduce_sum(counts + [stats.sums[n] for n in names], info)
    top1, top5, images, ce = totals[:4]
    sums = dict(zip(names, totals[4:]))
    model.train(was_training)
    out = {"images": int(images), "top1": 100.0 * top1 / max(images, 1), "top5": 100.0 * top5 / max(images, 1),
           "loss": ce / max(images, 1), "eval_s": time.perf_counter() - start}
    if sparse:
        layers = sparse_layers(model)
        out.update({
            "mode": layers[0].mode,
            "budget": layers[0].budget,
            "selection": layers[0].settings.selection,
            "keys_per_row": layers[0].keys_per_row,
            "num_tokens": layers[0].num_tokens,
            "basis_sparsity": basis_sparsity(model),
            "coef_sparsity": sums["coef_zero"] / max(sums["coef_total"], 1),
            "empty_coef_rows": sums["empty_rows"] / max(sums["rows"], 1),
            "mask_density": sums["mask_kept"] / max(sums["mask_total"], 1),
            "recall": sums["recall"] / max(sums["rows"], 1),
            "oracle_recall": sums["oracle"] / max(sums["rows"], 1),
            "row_oracle_recall": sums["row_oracle"] / max(sums["rows"], 1),
            "selection_recall": sums["selection"] / max(sums["rows"] * layers[0].budget, 1),
        })
        if attn_loss is not None:
            out["attn_loss"] = sums["attn_loss"] / len(layers) / max(images, 1)
    return out


def evaluate_checkpoints(paths: Sequence[str], data: str = "digits", *, batch_size: int = 256,
                         limit: Optional[int] = None, mode: str = "sparse", keep_rate: Optional[float] = None,
                         budget: Optional[int] = None, device: Optional[str] = None, progress: bool = False) -> list[dict]:
    """One row of metrics per checkpoint (see sparsifiner.train.evaluate)."""
    from sparsifiner.data import build_datasets, build_loader
    from sparsifiner.model.source import load_checkpoint
    from sparsifiner.model.sparsify import set_budget
    from sparsifiner.train.distributed import distributed_context

    if not paths:
        raise SparsifinerError("nothing to evaluate: pass --checkpoint PATH (repeatable)")
    rows = []
    with distributed_context(device) as info:
        for path in paths:
            model, kind = load_checkpoint(path, mode)
            if kind == "sparsifiner" and (keep_rate is not None or budget is not None):
                set_budget(model, budget=budget, keep_rate=keep_rate)
            _, val = build_datasets(data, model, augment=False, limit=limit)
            loader = build_loader(val, batch_size, False, info.world, info.rank)
            model = model.to(info.device)
            metrics = evaluate_model(model, loader, info, progress=progress, desc=Path(path).name)
            rows.append({"name": Path(path).name, "path": str(path), "kind": kind, **metrics})
    return rows


def format_eval_table(rows: list[dict]) -> str:
    """A fixed-width table of evaluation results (one row per model)."""
    head = f"{'model':<28} {'mode':<6} {'top-1':>7} {'top-5':>7} {'basis sp':>9} {'coef sp':>8} " \
           f"{'mask dens':>9} {'recall':>7} {'oracle':>7} {'keys':>9}"
    lines = [head, "-" * len(head)]

    def pct(row, key):
        return f"{100 * row[key]:.1f}%" if key in row else "-"

    for row in rows:
        lines.append(f"{row.get('name', '?'):<28.28} {row.get('mode', 'dense'):<6} {row['top1']:>6.2f}% {row['top5']:>6.2f}% "
                     f"{pct(row, 'basis_sparsity'):>9} {pct(row, 'coef_sparsity'):>8} {pct(row, 'mask_density'):>9} "
                     f"{pct(row, 'recall'):>7} {pct(row, 'oracle_recall'):>7} {_keys(row):>9}")
    return "\n".join(lines)


def _keys(row: dict) -> str:
    """Keys per row and how they are chosen: "16" (row), "24 tile" (tile-shared), "16 2-lvl"."""
    if "keys_per_row" not in row:
        return "-"
    kind = {"row": "", "tile": " tile", "two_level": " 2-lvl"}.get(row.get("selection", "row"), "")
    return f"{row['keys_per_row']}{kind}"
