"""Workflows: the only library code that chains stages (train, evaluate, figures, export).

``run_demo`` trains teacher, phase 1 and phase 2 on the bundled digits, evaluates them,
counts the MHSA MACs, draws the figures and, when given an export stage, exports the
result and validates it. ``run_regulariser_study`` repeats phases 1 and 2 from one
teacher with the L2 and the L1 regulariser under the same budget (Table 1 of the
supplementary).

Export lives above the library (``sparsifiner.export`` uses ``sparsifiner``, never the
reverse), so the export stage comes in as a callable: the CLI passes
``sparsifiner.export.export_and_validate``.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Optional

from sparsifiner.artifacts import write_json
from sparsifiner.train.evaluate import evaluate_checkpoints
from sparsifiner.train.settings import TrainSettings

PAPER = {"basis_sparsity_l2": 0.908, "basis_sparsity_l1": 0.913, "top1_l2": 79.79, "top1_l1": 78.81,
         "dense_top1": 79.8}
TARGETS = {"teacher_top1": 95.0, "max_drop": 1.5}
# An export stage: phase-2 checkpoint path -> report dict with "path", "passed" and "validation".
ExportStage = Callable[[Path], dict]


def mhsa_reduction(checkpoint: str, coef_density: Optional[float], basis_density: float,
                   settings: TrainSettings) -> dict:
    """MHSA MAC reduction of a Sparsifiner checkpoint (sparsifiner.model.flops) with its measured
    densities, and what the same settings and densities give on DeiT-S at 224 px (N = 197)."""
    from sparsifiner.model.flops import count_flops
    from sparsifiner.model.source import ModelSource

    data = count_flops(ModelSource(checkpoint=str(checkpoint)), coef_density=coef_density)
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
             figures: bool = True, export: Optional[ExportStage] = None) -> dict:
    """Teacher, phase 1 and phase 2 on the digits, then the export stage if given; returns the
    summary (see format_demo)."""
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
        "selection": final.get("selection", "row"),
        "keys_per_row": final.get("keys_per_row", final["budget"]),
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
    if export is not None:
        summary["onnx"] = export(Path(paths[2]))
    summary["wall_s"] = time.perf_counter() - start
    write_json(output / "demo_summary.json", summary)
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
        ("attention-mass recall", f"{100 * s['recall']:6.1f} %",
         f"(oracle top-{s.get('keys_per_row', s['budget'])}: {100 * s['oracle_recall']:.1f} %)"),
        ("MHSA MACs reduction", f"{100 * s['mhsa_reduction']:6.1f} %",
         f"(incl. predictor; {100 * s['mhsa_reduction_without_predictor']:.1f} % without; same settings and "
         f"densities on DeiT-S, N=197: {100 * s['mhsa_reduction_deit_small']:.1f} %)"),
        ("wall time", f"{s['wall_s']:6.0f} s", f"(training {s['train_s']:.0f} s)"),
    ]
    tiles = "" if s.get("selection", "row") == "row" else f", {s['selection']} selection, {s['keys_per_row']} keys per query"
    lines = [f"Sparsifiner demo (digits, N={s['num_tokens']} tokens, keep rate {s['keep_rate']} -> budget {s['budget']}"
             f"{tiles})"]
    lines += [f"  {label:<30} {value:>9}   {note}".rstrip() for label, value, note in rows]
    lines.append(f"  outputs: {s['output']}" + (f" (figures in {s['output']}/figures)" if s.get("figures") else ""))
    if s.get("onnx"):
        lines += format_demo_onnx(s["onnx"])
    return "\n".join(lines)


def format_demo_onnx(onnx: dict) -> list[str]:
    lines = [f"  ONNX export: {onnx['path']}"]
    for op, report in onnx["validation"].items():
        out = report["outputs"][0]
        selection = report.get("selection") or {}
        keys = (f", keys differ in {selection['rows_differing']} of {selection['rows']} rows" if selection else "")
        lines.append(f"    ONNX Runtime ({op}) vs PyTorch on {report['samples']} val digits: max abs "
                     f"{out['max_abs']:.2e}, {out['mismatches']} logits out of tolerance, top-1 agreement "
                     f"{100 * out['top1']:.1f} %{keys}  {'PASS' if report['passed'] else 'FAIL'}")
    if "extensions" not in onnx["validation"]:
        lines.append("    (the check of the op itself needs onnxruntime-extensions: pip install 'sparsifiner[ort-ext]')")
    return lines


def run_regulariser_study(settings: TrainSettings, output: str | Path = "runs/reg_study", *, resume: bool = False,
                          overwrite: bool = False, progress: bool = True, device: Optional[str] = None) -> dict:
    """Phases 1 and 2 with L2 and with L1 from one teacher, same budget; basis sparsity and top-1 each."""
    from sparsifiner.model.source import load_checkpoint
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
        model, _ = load_checkpoint(str(artifact_path(sub, "phase2")))
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
    write_json(output / "reg_study.json", results)
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
