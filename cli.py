"""The ``sparsifiner`` command line: a thin click layer over the library.

Each command parses flags, builds a settings object, calls one library function and
prints a short summary (or ``--json``). Heavy imports (torch, timm, onnx) happen
inside the commands so ``--help`` is instant. Bad input raises SparsifinerError,
which ``main`` prints as one line on stderr with exit status 2.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import click

from sparsifiner import __version__
from sparsifiner._namespace import require_namespace
from sparsifiner.errors import SparsifinerError

require_namespace(__name__, "sparsifiner.cli")

# Flags shared by every command that builds a model from settings.
SETTINGS_FLAGS = [
    click.option("--keep-rate", type=float, default=None, help="Share of keys kept per query, in (0, 1]. [default: 0.25]"),
    click.option("--budget", type=int, default=None, help="Explicit keys per query (overrides --keep-rate)."),
    click.option("--n-down", type=int, default=None, help="Predictor rank R. [default: 32]"),
    click.option("--basis-threshold", type=float, default=None, help="tau_basis. [default: 0.01]"),
    click.option("--coef-prune", type=click.Choice(["threshold", "topk", "none"]), default=None,
                 help="Coefficient pruning. [default: threshold]"),
]


def settings_options(func):
    for option in reversed(SETTINGS_FLAGS):
        func = option(func)
    return func


def build_settings(**flags):
    """SparsifinerSettings from the flags that were given (None means default)."""
    from sparsifiner.settings import SparsifinerSettings

    return SparsifinerSettings(**{k: v for k, v in flags.items() if v is not None})


def emit(data, as_json: bool, table: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else table)


class CommandError(click.ClickException):
    """A SparsifinerError as click shows it: one line on stderr, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class SparsifinerGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SparsifinerError as exc:
            raise CommandError(str(exc)) from exc


@click.group(cls=SparsifinerGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sparsifiner")
def cli():
    """Sparsifiner: learned sparse attention for timm vision transformers, from training to TensorRT."""


# --- core commands (issue 2) ---------------------------------------------------------------------

@cli.command()
@click.option("--model", "model_name", default="deit_small_patch16_224", show_default=True, help="timm model name.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="A Sparsifiner .safetensors checkpoint.")
@click.option("--img-size", type=int, default=None, help="Image size (default: the model's).")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(model_name, checkpoint, img_size, as_json, **flags):
    """Blocks, heads, tokens, budget and parameter counts of a Sparsifiner model."""
    from sparsifiner.model.report import model_info, format_info

    data = model_info(model_name, build_settings(**flags), img_size=img_size, checkpoint=checkpoint)
    emit(data, as_json, format_info(data))


@cli.command()
@click.option("--model", "model_name", default="deit_small_patch16_224", show_default=True, help="timm model name.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Use a checkpoint's settings and measured basis density.")
@click.option("--img-size", type=int, default=None, help="Image size (default: the model's).")
@settings_options
@click.option("--coef-density", type=float, default=None,
              help="Share of nonzero coefficients after pruning (default: coef_topk/R, or the paper's 0.13 for threshold).")
@click.option("--basis-density", type=float, default=None,
              help="Share of nonzero basis entries (default: measured from --checkpoint, else the paper's 0.092).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def flops(model_name, checkpoint, img_size, coef_density, basis_density, as_json, **flags):
    """Per-block and total MACs: dense vs Sparsifiner, split into MHSA, predictor, projections and MLP."""
    from sparsifiner.model.flops import count_flops, format_flops

    data = count_flops(model_name, build_settings(**flags), img_size=img_size, checkpoint=checkpoint,
                       coef_density=coef_density, basis_density=basis_density)
    emit(data, as_json, format_flops(data))


# --- training commands (issue 3) -----------------------------------------------------------------

# Flags of the commands that train; None means "as the recipe says".
TRAIN_FLAGS = [
    click.option("--recipe", default="demo", show_default=True,
                 help="Bundled recipe (demo, deit_small) or a YAML file; the flags below override it."),
    click.option("--model", "model_name", default=None, help="timm ViT name, or 'demo' (the bundled small ViT)."),
    click.option("--data", default=None, help="'digits' (bundled, no download) or an ImageFolder root with train/ and val/."),
    click.option("--img-size", type=int, default=None, help="Image size (default: the model's)."),
    click.option("--pretrained/--no-pretrained", default=None, help="Start from timm's pretrained weights (needs network)."),
    click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                 help="Local weights the first phase starts from: a dense model (.safetensors) for teacher/1, "
                      "a phase-1 checkpoint for 2."),
    click.option("--batch-size", type=int, default=None, help="Global images per optimiser step (all processes)."),
    click.option("--accum-steps", type=int, default=None, help="Gradient accumulation steps."),
    click.option("--epochs", type=int, default=None, help="Epochs of each phase that runs."),
    click.option("--lr", type=float, default=None, help="Peak learning rate of each phase that runs."),
    click.option("--min-lr", type=float, default=None, help="Final learning rate of the cosine."),
    click.option("--warmup-epochs", type=float, default=None, help="Linear warm-up epochs."),
    click.option("--weight-decay", type=float, default=None, help="AdamW weight decay."),
    click.option("--reg", type=click.Choice(["l2", "l1"]), default=None,
                 help="Phase-1 regulariser: l2 = AdamW weight decay, l1 = L1 penalty on W_up."),
    click.option("--l1-weight", type=float, default=None, help="Weight of the L1 penalty (--reg l1)."),
    click.option("--attn-reduction", type=click.Choice(["sum", "mean"]), default=None,
                 help="Phase-1 distillation reduction: sum (authors' code) or mean."),
    click.option("--seed", type=int, default=None, help="Seed of initialisation, shuffling and augmentation."),
    click.option("--workers", type=int, default=None, help="Data loader worker processes."),
    click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default=None,
                 help="Mixed precision on GPU (always off on CPU)."),
    click.option("--limit", type=int, default=None, help="Use only the first N images of each split (smoke tests)."),
    click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                 help="Any recipe setting, e.g. --set phase2.kl_weight=1.0 (repeatable)."),
]
RUN_FLAGS = [
    click.option("--output", type=click.Path(file_okay=False), default=None,
                 help="Output folder (default: runs/<recipe>)."),
    click.option("--resume", is_flag=True, help="Continue an interrupted run from its last complete epoch."),
    click.option("--overwrite", is_flag=True, help="Replace the phases' previous outputs in --output."),
    click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: the local GPU if any)."),
    click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)."),
    click.option("--no-progress", is_flag=True, help="No progress bars."),
    click.option("--json", "as_json", is_flag=True, help="Print JSON."),
]
TOP_LEVEL = {"model_name": "model", "data": "data", "img_size": "img_size", "pretrained": "pretrained",
             "checkpoint": "checkpoint", "batch_size": "batch_size", "accum_steps": "accum_steps", "seed": "seed",
             "workers": "workers", "amp": "amp", "limit": "limit"}
PER_PHASE = ("epochs", "lr", "min_lr", "warmup_epochs", "weight_decay", "reg", "l1_weight", "attn_reduction")


def train_options(func):
    for option in reversed(TRAIN_FLAGS + SETTINGS_FLAGS + RUN_FLAGS):
        func = option(func)
    return func


def build_train_settings_from_flags(recipe, phases, assignments, flags):
    """TrainSettings from a recipe, then --set, then the named flags (per-phase flags go to ``phases``)."""
    from sparsifiner.train.recipe import build_train_settings, load_recipe, parse_assignment

    overrides = dict(parse_assignment(a) for a in assignments)
    for flag, key in TOP_LEVEL.items():
        if flags.get(flag) is not None:
            overrides[key] = flags[flag]
    for key in PER_PHASE:
        if flags.get(key) is not None:
            overrides.update({f"{phase}.{key}": flags[key] for phase in phases})
    for key in ("keep_rate", "budget", "n_down", "basis_threshold", "coef_prune"):
        if flags.get(key) is not None:
            overrides[f"sparsifiner.{key}"] = flags[key]
    return build_train_settings(load_recipe(recipe), overrides)


def _runtime(threads, recipe, output, default_prefix="runs"):
    from pathlib import Path

    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))
    return output or str(Path(default_prefix) / Path(recipe).stem)


def _split_flags(flags):
    run = {k: flags.pop(k) for k in ("output", "resume", "overwrite", "device", "threads", "no_progress", "as_json")}
    return run, flags


@cli.command()
@click.option("--phase", type=click.Choice(["teacher", "1", "2", "both", "all"]), default="both", show_default=True,
              help="teacher: train the dense ViT; 1: predictor; 2: sparse fine-tuning; both: 1 then 2; all: teacher, 1, 2.")
@train_options
def train(phase, recipe, assignments, **flags):
    """Run the two-phase Sparsifiner recipe (phase 1: predictor; basis pruning; phase 2: sparse fine-tuning)."""
    from sparsifiner.train.runner import resolve_phases, run_training

    run, flags = _split_flags(flags)
    settings = build_train_settings_from_flags(recipe, resolve_phases(phase), assignments, flags)
    output = _runtime(run["threads"], recipe, run["output"])
    summary = run_training(settings, phase, output, resume=run["resume"], overwrite=run["overwrite"],
                           progress=not run["no_progress"], device=run["device"])
    lines = [f"{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in s.items() if k in ("top1", "basis_sparsity", "recall", "attn_loss", "path", "skipped"))
             for name, s in summary.items()]
    emit(summary, run["as_json"], "\n".join(lines))


@cli.command()
@click.option("--checkpoint", "checkpoints", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="A dense or Sparsifiner .safetensors checkpoint (repeatable).")
@click.option("--data", default="digits", show_default=True, help="'digits' or an ImageFolder root with val/.")
@click.option("--mode", type=click.Choice(["sparse", "dense"]), default="sparse", show_default=True,
              help="Attention mode of Sparsifiner checkpoints.")
@click.option("--weights", type=click.Choice(["raw", "ema"]), default="raw", show_default=True,
              help="raw: the checkpoint's weights; ema: the model EMA written beside it (<name>.ema.safetensors).")
@click.option("--keep-rate", type=float, default=None, help="Evaluate at another keep rate.")
@click.option("--budget", type=int, default=None, help="Evaluate at an explicit budget.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Images per batch.")
@click.option("--limit", type=int, default=None, help="Only the first N val images.")
@click.option("--device", default=None, help="cpu, cuda (default: the GPU if any).")
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def evaluate(checkpoints, data, mode, weights, keep_rate, budget, batch_size, limit, device, threads, as_json):
    """Top-1/top-5, basis and coefficient sparsity, mask density and attention-mass recall."""
    from sparsifiner.train.augment import ema_weights_path
    from sparsifiner.train.evaluate import format_eval_table
    from sparsifiner.train.workflows import evaluate_checkpoints

    _runtime(threads, "", None)
    if weights == "ema":
        checkpoints = [str(ema_weights_path(path)) for path in checkpoints]
    rows = evaluate_checkpoints(checkpoints, data, batch_size=batch_size, limit=limit, mode=mode,
                                keep_rate=keep_rate, budget=budget, device=device)
    emit(rows, as_json, format_eval_table(rows))


@cli.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="A Sparsifiner checkpoint.")
@click.option("--output", type=click.Path(file_okay=False), default="figures", show_default=True, help="Folder for the PNGs.")
@click.option("--data", default="digits", show_default=True, help="Where --index picks the image: 'digits' or an ImageFolder root.")
@click.option("--index", type=int, default=0, show_default=True, help="Val image index.")
@click.option("--image", type=click.Path(dir_okay=False, exists=True), default=None, help="An image file instead.")
@click.option("--query", default=None, metavar="ROW,COL", help="Query patch (default: the grid centre).")
@click.option("--blocks", default="3,4,5", show_default=True, help="Blocks to draw (clamped to the model's).")
@click.option("--heads", type=int, default=4, show_default=True, help="Heads to draw (clamped to the model's).")
@click.option("--budgets", default=None, help="Budgets, e.g. 49,20 (default: the model's and ~0.4x it).")
@click.option("--metrics", type=click.Path(dir_okay=False), default=None,
              help="metrics.jsonl for the curves (default: the one beside the checkpoint).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def visualize(checkpoint, output, data, index, image, query, blocks, heads, budgets, metrics, as_json):
    """Write the supplementary's figures: mask + sparse/full attention per head, pruned basis, curves."""
    from sparsifiner.viz import write_figures

    def ints(text, name, count=None):
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise SparsifinerError(f"--{name} takes comma-separated integers, got {text!r}") from None
        if count is not None and len(values) != count:
            raise SparsifinerError(f"--{name} takes {count} comma-separated integers, got {text!r}")
        return values

    result = write_figures(checkpoint, output, data=data, index=index, image=image,
                           query=tuple(ints(query, "query", 2)) if query else None, blocks=ints(blocks, "blocks"),
                           heads=heads, budgets=ints(budgets, "budgets") if budgets else None, metrics=metrics)
    files = result["attention"] + [result["basis"]] + ([result["curves"]] if result["curves"] else [])
    emit(result, as_json, "\n".join(files))


@cli.command()
@train_options
@click.option("--no-figures", is_flag=True, help="Skip the PNG figures.")
@click.option("--no-export", is_flag=True, help="Skip the ONNX export and its validation.")
def demo(recipe, assignments, no_figures, no_export, **flags):
    """Train teacher, phase 1 and phase 2 on the bundled digits, report accuracy, sparsity and FLOPs,
    then export the result to ONNX and validate it in ONNX Runtime against PyTorch.

    The validation verdict (PASS/FAIL with its figures) is part of the report; `sparsifiner validate`
    on the exported file is the command that exits non-zero on a failure."""
    from sparsifiner.train.runner import artifact_path
    from sparsifiner.train.workflows import format_demo, run_demo

    run, flags = _split_flags(flags)
    settings = build_train_settings_from_flags(recipe, ("teacher", "phase1", "phase2"), assignments, flags)
    output = _runtime(run["threads"], recipe, run["output"])
    summary = run_demo(settings, output, resume=run["resume"], overwrite=run["overwrite"],
                       progress=not run["no_progress"], device=run["device"], figures=not no_figures)
    table = format_demo(summary)
    if not no_export:
        summary["onnx"] = export_and_validate_demo(artifact_path(Path(summary["output"]), "phase2"))
        table += "\n" + format_demo_onnx(summary["onnx"])
    emit(summary, run["as_json"], table)


def export_and_validate_demo(checkpoint: Path) -> dict:
    """Export the demo's phase-2 model (custom op form) and validate it on every val digit,
    running the op through the graph's local function and through the op kernel."""
    from sparsifiner.data.digits import DigitsDataset
    from sparsifiner.export import ExportSettings, ModelSource, ValidateSettings, export_onnx, validate_onnx

    onnx_path = checkpoint.with_name("sparsifiner.onnx")
    export_onnx(ExportSettings(source=ModelSource(checkpoint=str(checkpoint)), attention="custom"), onnx_path)
    batch = 40
    num_batches = -(-len(DigitsDataset("val")) // batch)
    # The op kernel runs through onnxruntime-extensions, an optional extra (sparsifiner[ort-ext]).
    ops = ("function", "extensions") if importlib.util.find_spec("onnxruntime_extensions") else ("function",)
    reports = {op: validate_onnx(ValidateSettings(onnx_path=str(onnx_path), inputs="demo", batch=batch,
                                                  num_batches=num_batches, ort_op=op))
               for op in ops}
    return {"path": str(onnx_path), "passed": all(r["passed"] for r in reports.values()), "validation": reports}


def format_demo_onnx(onnx: dict) -> str:
    lines = [f"  ONNX export: {onnx['path']}"]
    for op, report in onnx["validation"].items():
        out = report["outputs"][0]
        lines.append(f"    ONNX Runtime ({op}) vs PyTorch on {report['samples']} val digits: max abs "
                     f"{out['max_abs']:.2e}, p99 {out['quantiles']['p99']:.1e}, {out['mismatches']} logits out of "
                     f"tolerance, top-1 agreement {100 * out['top1']:.1f} %  {'PASS' if report['passed'] else 'FAIL'}")
    if not onnx["passed"]:
        lines.append("    (isolated outliers come from near-ties in the top-B selection: the runtimes sum the scores in a "
                     "different order and can keep a different key)")
    if "extensions" not in onnx["validation"]:
        lines.append("    (the op-kernel check needs onnxruntime-extensions: pip install 'sparsifiner[ort-ext]')")
    return "\n".join(lines)


@cli.command("reg-study")
@train_options
def reg_study(recipe, assignments, **flags):
    """Table 1: phases 1 and 2 with the L2 and the L1 regulariser from one teacher, same budget."""
    from sparsifiner.train.workflows import format_reg_study, run_regulariser_study

    run, flags = _split_flags(flags)
    settings = build_train_settings_from_flags(recipe, ("teacher", "phase1", "phase2"), assignments, flags)
    output = _runtime(run["threads"], recipe, run["output"] or "runs/reg_study")
    result = run_regulariser_study(settings, output, resume=run["resume"], overwrite=run["overwrite"],
                                   progress=not run["no_progress"], device=run["device"])
    emit(result, run["as_json"], format_reg_study(result))


# --- export commands (issue 4) -------------------------------------------------------------------

# Flags naming the PyTorch model of an export or a validation.
SOURCE_FLAGS = [
    click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                 help="A Sparsifiner .safetensors checkpoint (its basis must be pruned for sparse attention)."),
    click.option("--model", "model_name", default=None,
                 help="timm model name made into a Sparsifiner with random weights ('demo': the digits ViT)."),
    click.option("--pretrained", is_flag=True, help="With --model: timm's pretrained backbone weights."),
    click.option("--img-size", type=int, default=None, help="Image size (default: the model's)."),
]


def source_options(func):
    for option in reversed(SOURCE_FLAGS):
        func = option(func)
    return func


@cli.command()
@click.option("--onnx", "onnx_path", required=True, type=click.Path(dir_okay=False), help="Output .onnx file.")
@source_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --model's random weights.")
@click.option("--attention", type=click.Choice(["custom", "decomposed", "dense"]), default="custom", show_default=True,
              help="custom: TopKMaskedAttention nodes (+ a standard-op local function); decomposed: standard ops "
                   "only; dense: the teacher with timm's attention.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (17 or later).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--batch", default="dynamic", show_default=True,
              help="A fixed batch size, or the name of a dynamic batch dimension ('dynamic' names it 'batch').")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def export(onnx_path, checkpoint, model_name, pretrained, img_size, seed, attention, opset, dtype, batch, as_json,
           **flags):
    """Export a Sparsifiner (or its dense teacher) to ONNX."""
    from sparsifiner.export import ExportSettings, ModelSource, export_onnx, format_export

    given = {k: v for k, v in flags.items() if v is not None}
    source = ModelSource(checkpoint=checkpoint, model_name=model_name, pretrained=pretrained, seed=seed,
                         img_size=img_size, settings=build_settings(**given) if given else None)
    data = export_onnx(ExportSettings(source=source, attention=attention, opset=opset, dtype=dtype, batch=batch),
                       onnx_path)
    emit(data, as_json, format_export(data))


@cli.command()
@click.option("--onnx", "onnx_path", required=True, type=click.Path(dir_okay=False), help="The exported .onnx file.")
@source_options
@click.option("--seed", type=int, default=None, help="Seed of --model's random weights (default: the export's).")
@settings_options
@click.option("--inputs", default="random", show_default=True,
              help="'random', 'demo' (the digits validation split), or a folder of images.")
@click.option("--batch", type=int, default=None, help="Batch size (default: the graph's fixed size, else 4).")
@click.option("--num-batches", type=int, default=2, show_default=True, help="Batches of random or demo inputs.")
@click.option("--input-seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--ort-op", type=click.Choice(["function", "extensions"]), default="function", show_default=True,
              help="How ONNX Runtime runs TopKMaskedAttention: the graph's local function, or the op itself "
                   "(onnxruntime-extensions kernel running the PyTorch reference).")
@click.option("--atol", type=float, default=None, help="Absolute tolerance. [default: 1e-4 fp32, 2e-2 fp16]")
@click.option("--rtol", type=float, default=None, help="Relative tolerance. [default: 1e-3 fp32, 2e-2 fp16]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def validate(ctx, onnx_path, checkpoint, model_name, pretrained, img_size, seed, inputs, batch, num_batches,
             input_seed, ort_op, atol, rtol, as_json, **flags):
    """Compare an exported graph in ONNX Runtime with PyTorch; exit status 1 when outside tolerance."""
    from sparsifiner.export import ValidateSettings, format_report, source_for_validation, validate_onnx

    source = source_for_validation(onnx_path, checkpoint=checkpoint, model_name=model_name, pretrained=pretrained,
                                   seed=seed, img_size=img_size, settings={k: v for k, v in flags.items() if v is not None})
    report = validate_onnx(ValidateSettings(onnx_path=onnx_path, source=source, inputs=inputs, batch=batch,
                                            num_batches=num_batches, seed=input_seed, ort_op=ort_op, atol=atol, rtol=rtol))
    emit(report, as_json, format_report(report))
    if not report["passed"]:
        ctx.exit(1)



# --- kernel commands (issue 5) -------------------------------------------------------------------


def main() -> None:
    """Console entry point."""
    cli(prog_name="sparsifiner")


if __name__ == "__main__":
    main()
