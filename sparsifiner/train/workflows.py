"""End-to-end workflows on top of training: evaluate checkpoints, the demo, the regulariser study.

``evaluate_checkpoints`` scores dense, phase-1 and phase-2 checkpoints on a val set.
``run_demo`` trains teacher, phase 1 and phase 2 on the bundled digits, evaluates
them, counts the MHSA MACs and draws the figures. ``run_regulariser_study`` repeats
phases 1 and 2 from one teacher with the L2 and the L1 regulariser under the same
budget (Table 1 of the supplementary).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional, Sequence

from sparsifiner.errors import SparsifinerError
from sparsifiner.train.settings import TrainSettings

PAPER = {"basis_sparsity_l2": 0.908, "basis_sparsity_l1": 0.913, "top1_l2": 79.79, "top1_l1": 78.81,
         "dense_top1": 79.8}
TARGETS = {"teacher_top1": 95.0, "max_drop": 1.5}


def load_any(path: str, mode: Optional[str] = "sparse"):
    """A model from a dense or Sparsifiner checkpoint, and its kind."""
    from sparsifiner.model.io import load_sparsifiner
    from sparsifiner.train.checkpoint import DENSE_FORMAT, read_weights
    from sparsifiner.train.models import dense_from_state

    info, state = read_weights(Path(path))
    if info is None:
        raise SparsifinerError(f"{path} has no description: evaluate checkpoints written by sparsifiner train")
    if info.get("format") == DENSE_FORMAT:
        return dense_from_state(info["arch"], state, str(path)).eval(), "dense"
    return load_sparsifiner(path, mode=mode), "sparsifiner"


def evaluate_checkpoints(paths: Sequence[str], data: str = "digits", *, batch_size: int = 256,
                         limit: Optional[int] = None, mode: str = "sparse", keep_rate: Optional[float] = None,
                         budget: Optional[int] = None, device: Optional[str] = None, progress: bool = False) -> list[dict]:
    """One row of metrics per checkpoint (see sparsifiner.train.evaluate)."""
    from sparsifiner.data import build_datasets, build_loader
    from sparsifiner.model.sparsify import sparse_layers
    from sparsifiner.train.distributed import distributed_context
    from sparsifiner.train.evaluate import evaluate_model

    if not paths:
        raise SparsifinerError("nothing to evaluate: pass --checkpoint PATH (repeatable)")
    rows = []
    with distributed_context(device) as info:
        for path in paths:
            model, kind = load_any(path, mode)
            if kind == "sparsifiner" and (keep_rate is not None or budget is not None):
                layers = sparse_layers(model)
                changed = layers[0].settings.replace(keep_rate=keep_rate or layers[0].settings.keep_rate, budget=budget)
                for layer in layers:
                    layer.budget = changed.resolve_budget(layer.num_tokens, layer.num_prefix_tokens)
            _, val = build_datasets(data, model, augment=False, limit=limit)
            loader = build_loader(val, batch_size, False, info.world, info.rank)
            model = model.to(info.device)
            metrics = evaluate_model(model, loader, info, progress=progress, desc=Path(path).name)
            rows.append({"name": Path(path).name, "path": str(path), "kind": kind, **metrics})
    return rows


def mhsa_reduction(checkpoint: str, coef_density: Optional[float], basis_density: float,
                   settings: TrainSettings) -> dict:
    """MHSA MAC reduction of a Sparsifiner checkpoint (sparsifiner.model.flops) with its measured
    densities, and what the same settings and densities give on DeiT-S at 224 px (N = 197)."""
    from sparsifiner.model.flops import count_flops

    data = count_flops("", None, checkpoint=checkpoint, coef_density=coef_density)
    deit = count_flops("deit_small_patch16_224", settings.sparsifiner, coef_density=coef_density,
                       basis_density=basis_density)
    return {"mhsa_reduction": data["reduction"]["mhsa"],
            "mhsa_reduction_deit_small": deit["reduction"]["mhsa"],
            "mhsa_reduction_without_predictor": data["reduction"]["mhsa_without_predictor"],
            "model_reduction": data["reduction"]["model"],
            "dense_mhsa_macs": data["total"]["dense"]["mhsa"],
            "sparse_mhsa_macs": data["total"]["sparsifiner"]["mhsa"] + data["total"]["sparsifiner"]["predictor"]}


def run_demo(settings: TrainSettings, output: str | Path = "runs/demo", *, resume: bool = False,
             overwrite: bool = False, progress: bool = True, device: Optional[str] = None,
             figures: bool = True) -> dict:
    """Teacher, phase 1 and phase 2 on the digits; returns the summary (see format_demo)."""
    from sparsifiner.train.runner import artifact_path, run_training

    start = time.perf_counter()
    output = Path(output)
    run_training(settings, "all", output, resume=resume, overwrite=overwrite, progress=progress, device=device)
    train_s = time.perf_counter() - start
    paths = [str(artifact_path(output, p)) for p in ("teacher", "phase1", "phase2")]
    rows = evaluate_checkpoints(paths, settings.data, batch_size=settings.eval_batch_size, limit=settings.limit,
                                device=device)
    teacher, phase1, final = rows
    summary = {
        "output": str(output),
        "teacher_top1": teacher["top1"],
        "phase1_top1": phase1["top1"],
        "sparsifiner_top1": final["top1"],
        "top1_drop": teacher["top1"] - final["top1"],
        "keep_rate": settings.sparsifiner.keep_rate,
        "budget": final["budget"],
        "num_tokens": final["num_tokens"],
        "basis_threshold": settings.sparsifiner.basis_threshold,
        "basis_sparsity": final["basis_sparsity"],
        "paper_basis_sparsity": PAPER["basis_sparsity_l2"],
        "coef_sparsity": final["coef_sparsity"],
        "empty_coef_rows": final["empty_coef_rows"],
        "mask_density": final["mask_density"],
        "recall": final["recall"],
        "oracle_recall": final["oracle_recall"],
        **mhsa_reduction(paths[2], 1.0 - final["coef_sparsity"], 1.0 - final["basis_sparsity"], settings),
        "train_s": train_s,
        "evaluation": rows,
        "train_settings": settings.to_dict(),
    }
    summary["targets"] = {
        "teacher_top1_ge_95": summary["teacher_top1"] >= TARGETS["teacher_top1"],
        "drop_le_1.5": summary["top1_drop"] <= TARGETS["max_drop"],
    }
    if figures:
        from sparsifiner.viz import write_figures

        summary["figures"] = write_figures(paths[2], str(output / "figures"), data=settings.data,
                                           metrics=str(output / "metrics.jsonl"))
    summary["wall_s"] = time.perf_counter() - start
    _save_json(output / "demo_summary.json", summary)
    return summary


def format_demo(s: dict) -> str:
    ok = {True: "ok", False: "MISSED"}
    t = s["targets"]
    rows = [
        ("teacher (dense) top-1", f"{s['teacher_top1']:6.2f} %", f"target >= 95: {ok[t['teacher_top1_ge_95']]}"),
        ("phase 1 (sparse, not tuned)", f"{s['phase1_top1']:6.2f} %", ""),
        ("Sparsifiner top-1", f"{s['sparsifiner_top1']:6.2f} %",
         f"drop {s['top1_drop']:+.2f} points (target <= 1.5: {ok[t['drop_le_1.5']]})"),
        (f"basis sparsity (tau {s['basis_threshold']})", f"{100 * s['basis_sparsity']:6.1f} %",
         f"(paper, DeiT-S: {100 * s['paper_basis_sparsity']:.1f} %)"),
        ("coefficient sparsity", f"{100 * s['coef_sparsity']:6.1f} %",
         f"(rows with every coefficient pruned: {100 * s['empty_coef_rows']:.1f} %)"),
        ("mask density", f"{100 * s['mask_density']:6.1f} %", ""),
        ("attention-mass recall", f"{100 * s['recall']:6.1f} %", f"(oracle top-{s['budget']}: {100 * s['oracle_recall']:.1f} %)"),
        ("MHSA MACs reduction", f"{100 * s['mhsa_reduction']:6.1f} %",
         f"(incl. predictor; {100 * s['mhsa_reduction_without_predictor']:.1f} % without; same settings and "
         f"densities on DeiT-S, N=197: {100 * s['mhsa_reduction_deit_small']:.1f} %)"),
        ("wall time", f"{s['wall_s']:6.0f} s", f"(training {s['train_s']:.0f} s)"),
    ]
    lines = [f"Sparsifiner demo (digits, N={s['num_tokens']} tokens, keep rate {s['keep_rate']} -> budget {s['budget']})"]
    lines += [f"  {label:<30} {value:>9}   {note}".rstrip() for label, value, note in rows]
    lines.append(f"  outputs: {s['output']}" + (f" (figures in {s['output']}/figures)" if s.get("figures") else ""))
    return "\n".join(lines)


def run_regulariser_study(settings: TrainSettings, output: str | Path = "runs/reg_study", *, resume: bool = False,
                          overwrite: bool = False, progress: bool = True, device: Optional[str] = None) -> dict:
    """Phases 1 and 2 with L2 and with L1 from one teacher, same budget; basis sparsity and top-1 each."""
    from sparsifiner.train.runner import artifact_path, run_training
    from sparsifiner.viz.basis import basis_figure

    output = Path(output)
    start = time.perf_counter()
    teacher = settings.checkpoint
    if teacher is None:
        run_training(settings, "teacher", output, resume=resume, overwrite=overwrite, progress=progress,
                     device=device)
        teacher = str(artifact_path(output, "teacher"))
    results = {"teacher": teacher, "runs": {}}
    for reg in ("l2", "l1"):
        run_settings = settings.replace(checkpoint=teacher, phase1=dataclasses.replace(settings.phase1, reg=reg))
        sub = output / reg
        run_training(run_settings, "both", sub, resume=resume, overwrite=overwrite, progress=progress, device=device)
        row = evaluate_checkpoints([str(artifact_path(sub, "phase2"))], settings.data,
                                   batch_size=settings.eval_batch_size, limit=settings.limit, device=device)[0]
        model, _ = load_any(str(artifact_path(sub, "phase2")))
        figure = basis_figure(model, output / f"basis_{reg}.png",
                              title=f"pruned basis W_up, {reg.upper()} regulariser "
                                    f"(tau {settings.sparsifiner.basis_threshold}): {100 * row['basis_sparsity']:.1f}% zero")
        results["runs"][reg] = {"basis_sparsity": row["basis_sparsity"], "top1": row["top1"],
                                "dead_basis_vectors": _dead_vectors(model), "figure": str(figure),
                                "paper_basis_sparsity": PAPER[f"basis_sparsity_{reg}"],
                                "paper_top1": PAPER[f"top1_{reg}"]}
    results["l1_weight"] = settings.phase1.l1_weight
    results["train_settings"] = settings.to_dict()
    results["wall_s"] = time.perf_counter() - start
    _save_json(output / "reg_study.json", results)
    return results


def _dead_vectors(model) -> int:
    """Basis vectors pruned to all zeros, summed over blocks (the L1 collapse the paper describes)."""
    from sparsifiner.model.sparsify import sparse_layers

    return int(sum(int((layer.predictor.sparse_basis() == 0).all(-1).sum()) for layer in sparse_layers(model)))


def format_reg_study(r: dict) -> str:
    lines = [f"{'regulariser':<12} {'basis sparsity':>15} {'top-1':>8} {'dead vectors':>13}   paper (DeiT-S): sparsity, top-1"]
    for reg, row in r["runs"].items():
        lines.append(f"{reg.upper():<12} {100 * row['basis_sparsity']:>14.1f}% {row['top1']:>7.2f}% "
                     f"{row['dead_basis_vectors']:>13}   {100 * row['paper_basis_sparsity']:.1f} %, {row['paper_top1']:.2f} %")
    lines.append(f"L1 weight {r['l1_weight']}; figures: " + ", ".join(row["figure"] for row in r["runs"].values()))
    return "\n".join(lines)


def _save_json(path: Path, data: dict) -> None:
    from sparsifiner.model.io import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str) + "\n"))
