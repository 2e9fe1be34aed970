"""Training curves from a run's ``metrics.jsonl``: one panel per phase.

Each panel shows the training loss (per logged step, and the epoch mean) on the left
axis and the phase's validation metric on the right: top-1 for the teacher and phase
2, the per-image distillation loss and the attention-mass recall for phase 1.
"""
from __future__ import annotations

import json
from pathlib import Path

from sparsifiner.errors import SparsifinerError

PHASE_TITLES = {"teacher": "teacher (dense, CE)", "phase1": "phase 1 (predictor, attention distillation)",
                "phase2": "phase 2 (backbone, sparse attention)"}


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise SparsifinerError(f"metrics log {path} not found: pass the metrics.jsonl of a training run")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise SparsifinerError(f"{path} line {n} is not JSON: pass a metrics.jsonl written by training") from None
    return records


def curves_figure(metrics_path: Path, path: Path) -> Path:
    """Write the training-curves figure of a metrics log to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    phases = [p for p in PHASE_TITLES if any(r.get("phase") == p for r in records)]
    if not phases:
        raise SparsifinerError(f"{metrics_path} has no training records")
    fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 3.6), squeeze=False)
    for ax, phase in zip(axes[0], phases):
        rows = [r for r in records if r.get("phase") == phase]
        epochs = [r for r in rows if r.get("kind") == "epoch"]
        steps = [r for r in rows if r.get("kind") == "step"]
        trained = [r for r in epochs if "train_loss" in r]
        per_epoch = max((r["step"] / r["epoch"] for r in trained if r.get("epoch")), default=1.0)
        if steps:
            ax.plot([r["step"] / per_epoch for r in steps], [r["loss"] for r in steps], color="tab:blue", alpha=0.35,
                    lw=0.8, label="train loss (step)")
        ax.plot([r["epoch"] for r in trained], [r["train_loss"] for r in trained], "o-", color="tab:blue",
                label="train loss (epoch)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss", color="tab:blue")
        ax.set_title(PHASE_TITLES[phase], fontsize=9)
        right = ax.twinx()
        if phase == "phase1":
            pts = [r for r in epochs if "val_recall" in r]
            right.plot([r["epoch"] for r in pts], [100 * r["val_recall"] for r in pts], "s-", color="tab:green",
                       label="val mass recall %")
            right.plot([r["epoch"] for r in pts], [100 * r["val_oracle_recall"] for r in pts], ":", color="tab:green",
                       label="oracle recall %")
            lp = [r for r in epochs if "val_attn_loss" in r]
            ax.plot([r["epoch"] for r in lp], [r["val_attn_loss"] for r in lp], "^--", color="tab:purple",
                    label="val loss (sum over rows, per image)")
            right.set_ylabel("recall %", color="tab:green")
        else:
            pts = [r for r in epochs if "val_top1" in r]
            right.plot([r["epoch"] for r in pts], [r["val_top1"] for r in pts], "s-", color="tab:red",
                       label="val top-1 %")
            right.set_ylabel("top-1 %", color="tab:red")
        lines = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="center right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
