"""The ``sparsifiner`` command line: a thin click layer over the library.

Each command parses flags, builds a settings object, calls one library function and
prints a short summary (or ``--json``). Every option is defined once (``OPTIONS``) and
means the same in every command; where a command has its own default, the option says
so. Heavy imports (torch, timm, onnx) happen inside the commands so ``--help`` is
instant. Bad input raises SparsifinerError, which ``main`` prints as one line on stderr
with exit status 2.
"""
from __future__ import annotations

import json

import click

from sparsifiner import __version__
from sparsifiner._namespace import require_namespace
from sparsifiner.errors import SparsifinerError

require_namespace(__name__, "sparsifiner.cli")

DEFAULT_MODEL = "deit_small_patch16_224"  # what info and flops describe without --model

OPTIONS = {
    # the model
    "checkpoint": click.option("--checkpoint", type=click.Path(), default=None,
                               help="A Sparsifiner checkpoint: a .safetensors file or a hub folder (sparsifiner.save_hub)."),
    "model": click.option("--model", "model_name", default=None,
                          help="timm ViT name made into a Sparsifiner ('demo': the bundled digits ViT)."),
    "pretrained": click.option("--pretrained/--no-pretrained", default=None,
                               help="timm's pretrained backbone weights (needs network or timm's cache)."),
    "img_size": click.option("--img-size", type=int, default=None, help="Image size (default: the model's)."),
    "seed": click.option("--seed", type=int, default=None,
                         help="Seed of random weights, shuffling and augmentation (default: 0, or the recipe's)."),
    # Sparsifiner settings
    "keep_rate": click.option("--keep-rate", type=float, default=None,
                              help="Share of keys kept per query, in (0, 1]. [default: 0.25]"),
    "budget": click.option("--budget", type=int, default=None, help="Explicit keys per query (overrides --keep-rate)."),
    "n_down": click.option("--n-down", type=int, default=None, help="Predictor rank R. [default: 32]"),
    "basis_threshold": click.option("--basis-threshold", type=float, default=None, help="tau_basis. [default: 0.01]"),
    "coef_prune": click.option("--coef-prune", type=click.Choice(["threshold", "topk", "none"]), default=None,
                               help="Coefficient pruning. [default: threshold]"),
    "selection": click.option("--selection", type=click.Choice(["row", "tile", "two_level"]), default=None,
                              help="Key selection: per query (row, the paper), shared by a patch tile (tile), or "
                                   "the tile's top-C then each query's top-B (two_level). [default: row]"),
    "tile_rows": click.option("--tile-rows", type=int, default=None, help="Tile height on the patch grid. [default: 8]"),
    "tile_cols": click.option("--tile-cols", type=int, default=None, help="Tile width on the patch grid. [default: 8]"),
    "tile_budget": click.option("--tile-budget", type=int, default=None,
                                help="Keys kept per tile, C (default: tile_factor x budget)."),
    # data and running
    "data": click.option("--data", default=None,
                         help="'digits' (bundled, no download) or an ImageFolder root with train/ and val/ "
                              "(default: digits, or the recipe's)."),
    "batch_size": click.option("--batch-size", type=int, default=None,
                               help="Images per batch (evaluate: 256; train: global images per optimiser step, "
                                    "default the recipe's)."),
    "limit": click.option("--limit", type=int, default=None, help="Use only the first N images of each split."),
    "device": click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: the local GPU if any)."),
    "threads": click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)."),
    "json": click.option("--json", "as_json", is_flag=True, help="Print JSON."),
    # validation
    "inputs": click.option("--inputs", default="random", show_default=True,
                           help="'random', 'demo' (the digits validation split), or a folder of images."),
    "num_batches": click.option("--num-batches", type=int, default=2, show_default=True,
                                help="Batches of random or demo inputs."),
    "input_seed": click.option("--input-seed", type=int, default=0, show_default=True, help="Seed of the random inputs."),
    "ort_op": click.option("--ort-op", type=click.Choice(["auto", "function", "native", "extensions"]), default="auto",
                           show_default=True,
                           help="How ONNX Runtime runs TopKMaskedAttention: the graph's local function, the native "
                                "C++ kernel (built on demand), or an onnxruntime-extensions Python op running the "
                                "PyTorch reference; auto = native when built, else function."),
    "atol": click.option("--atol", type=float, default=None,
                         help="Absolute tolerance. [default: 1e-4 fp32, 2e-2 fp16, 6e-2 bf16]"),
    "rtol": click.option("--rtol", type=float, default=None,
                         help="Relative tolerance. [default: 1e-3 fp32, 2e-2 fp16, 6e-2 bf16]"),
}
SETTINGS_OPTIONS = ("keep_rate", "budget", "n_down", "basis_threshold", "coef_prune", "selection", "tile_rows",
                    "tile_cols", "tile_budget")
VALIDATE_OPTIONS = ("inputs", "num_batches", "input_seed", "ort_op", "atol", "rtol")
SOURCE_OPTIONS = ("checkpoint", "model", "pretrained", "img_size", "seed")


def options(*names):
    """Decorator applying OPTIONS[name] for each name, in the given order."""
    def apply(func):
        for name in reversed(names):
            func = OPTIONS[name](func)
        return func
    return apply


def pop(flags: dict, *names) -> list:
    return [flags.pop(name) for name in names]


def build_settings(**flags):
    """SparsifinerSettings from the settings flags that were given; None when none was."""
    from sparsifiner.settings import SparsifinerSettings

    given = {k: v for k, v in flags.items() if v is not None}
    return SparsifinerSettings(**given) if given else None


def model_source(checkpoint, model_name, pretrained, img_size, seed, settings_flags, default_model=None):
    """The ModelSource the source and settings flags name (``default_model`` when neither
    --checkpoint nor --model is given)."""
    from sparsifiner.model.source import ModelSource

    if checkpoint is None and model_name is None:
        model_name = default_model
    return ModelSource(checkpoint=checkpoint, model_name=model_name, pretrained=bool(pretrained), seed=seed or 0,
                       img_size=img_size, settings=build_settings(**settings_flags))


def set_threads(threads) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))


def emit(data, as_json: bool, table: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else table)


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


# --- model reports --------------------------------------------------------------------------------

@cli.command()
@options("model", "checkpoint", "img_size", *SETTINGS_OPTIONS, "json")
def info(model_name, checkpoint, img_size, as_json, **flags):
    """Blocks, heads, tokens, budget and parameter counts of a Sparsifiner model
    (default: deit_small_patch16_224; a checkpoint at another --img-size is resized)."""
    from sparsifiner.model.report import format_info, model_info

    data = model_info(model_source(checkpoint, model_name, False, img_size, None, flags, DEFAULT_MODEL))
    emit(data, as_json, format_info(data))


@cli.command()
@options("model", "checkpoint", "img_size", *SETTINGS_OPTIONS)
@click.option("--coef-density", type=float, default=None,
              help="Share of nonzero coefficients after pruning (default: coef_topk/R, or the paper's 0.13 for threshold).")
@click.option("--basis-density", type=float, default=None,
              help="Share of nonzero basis entries (default: measured from --checkpoint, else the paper's 0.092).")
@options("json")
def flops(model_name, checkpoint, img_size, coef_density, basis_density, as_json, **flags):
    """Per-block and total MACs: dense vs Sparsifiner, split into MHSA, predictor, projections and MLP
    (default: deit_small_patch16_224)."""
    from sparsifiner.model.flops import count_flops, format_flops

    data = count_flops(model_source(checkpoint, model_name, False, img_size, None, flags, DEFAULT_MODEL),
                       coef_density=coef_density, basis_density=basis_density)
    emit(data, as_json, format_flops(data))


# --- training ---------------------------------------------------------------------------------------

# Flags of the commands that train; None means "as the recipe says".
TRAIN_FLAGS = [
    click.option("--recipe", default="demo", show_default=True,
                 help="Bundled recipe (demo, deit_small) or a YAML file; the flags below override it."),
    OPTIONS["model"], OPTIONS["data"], OPTIONS["img_size"], OPTIONS["pretrained"],
    click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                 help="Local weights the first phase starts from: a dense model (.safetensors) for teacher/1, "
                      "a phase-1 checkpoint for 2."),
    OPTIONS["batch_size"],
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
    OPTIONS["seed"],
    click.option("--workers", type=int, default=None, help="Data loader worker processes."),
    click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default=None,
                 help="Mixed precision on GPU (always off on CPU)."),
    OPTIONS["limit"],
    click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                 help="Any recipe setting, e.g. --set phase2.kl_weight=1.0 (repeatable)."),
    *(OPTIONS[name] for name in SETTINGS_OPTIONS),
    click.option("--output", type=click.Path(file_okay=False), default=None,
                 help="Output folder (default: runs/<recipe>)."),
    click.option("--resume", is_flag=True, help="Continue an interrupted run from its last complete epoch."),
    click.option("--overwrite", is_flag=True, help="Replace the phases' previous outputs in --output."),
    OPTIONS["device"], OPTIONS["threads"],
    click.option("--no-progress", is_flag=True, help="No progress bars."),
    OPTIONS["json"],
]
TOP_LEVEL = {"model_name": "model", "data": "data", "img_size": "img_size", "pretrained": "pretrained",
             "checkpoint": "checkpoint", "batch_size": "batch_size", "accum_steps": "accum_steps", "seed": "seed",
             "workers": "workers", "amp": "amp", "limit": "limit"}
PER_PHASE = ("epochs", "lr", "min_lr", "warmup_epochs", "weight_decay", "reg", "l1_weight", "attn_reduction")
RUN_KEYS = ("output", "resume", "overwrite", "device", "threads", "no_progress", "as_json")


def train_options(func):
    for option in reversed(TRAIN_FLAGS):
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
    for key in SETTINGS_OPTIONS:
        if flags.get(key) is not None:
            overrides[f"sparsifiner.{key}"] = flags[key]
    return build_train_settings(load_recipe(recipe), overrides)


def training_run(recipe, phases, assignments, flags, default_output=None):
    """(settings, run options, output folder) of a command built on TRAIN_FLAGS."""
    from pathlib import Path

    run = {key: flags.pop(key) for key in RUN_KEYS}
    settings = build_train_settings_from_flags(recipe, phases, assignments, flags)
    set_threads(run["threads"])
    output = run["output"] or default_output or str(Path("runs") / Path(recipe).stem)
    kwargs = {"resume": run["resume"], "overwrite": run["overwrite"], "progress": not run["no_progress"],
              "device": run["device"]}
    return settings, kwargs, output, run["as_json"]


@cli.command()
@click.option("--phase", type=click.Choice(["teacher", "1", "2", "both", "all"]), default="both", show_default=True,
              help="teacher: train the dense ViT; 1: predictor; 2: sparse fine-tuning; both: 1 then 2; all: teacher, 1, 2.")
@train_options
def train(phase, recipe, assignments, **flags):
    """Run the two-phase Sparsifiner recipe (phase 1: predictor; basis pruning; phase 2: sparse fine-tuning)."""
    from sparsifiner.train.runner import resolve_phases, run_training

    settings, kwargs, output, as_json = training_run(recipe, resolve_phases(phase), assignments, flags)
    summary = run_training(settings, phase, output, **kwargs)
    lines = [f"{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in s.items() if k in ("top1", "basis_sparsity", "recall", "attn_loss", "path", "skipped"))
             for name, s in summary.items()]
    emit(summary, as_json, "\n".join(lines))


@cli.command()
@click.option("--checkpoint", "checkpoints", multiple=True, required=True, type=click.Path(),
              help="A dense or Sparsifiner .safetensors checkpoint (repeatable).")
@options("data")
@click.option("--mode", type=click.Choice(["sparse", "dense"]), default="sparse", show_default=True,
              help="Attention mode of Sparsifiner checkpoints.")
@click.option("--weights", type=click.Choice(["raw", "ema"]), default="raw", show_default=True,
              help="raw: the checkpoint's weights; ema: the model EMA written beside it (<name>.ema.safetensors).")
@options("keep_rate", "budget", "batch_size", "limit", "device", "threads", "json")
def evaluate(checkpoints, data, mode, weights, keep_rate, budget, batch_size, limit, device, threads, as_json):
    """Top-1/top-5, basis and coefficient sparsity, mask density and attention-mass recall
    (--keep-rate/--budget evaluate at another budget)."""
    from sparsifiner.train.augment import ema_weights_path
    from sparsifiner.train.evaluate import evaluate_checkpoints, format_eval_table

    set_threads(threads)
    if weights == "ema":
        checkpoints = [str(ema_weights_path(path)) for path in checkpoints]
    rows = evaluate_checkpoints(checkpoints, data or "digits", batch_size=batch_size or 256, limit=limit, mode=mode,
                                keep_rate=keep_rate, budget=budget, device=device)
    emit(rows, as_json, format_eval_table(rows))


@cli.command()
@click.option("--checkpoint", required=True, type=click.Path(), help="A Sparsifiner checkpoint (file or hub folder).")
@click.option("--output", type=click.Path(file_okay=False), default="figures", show_default=True, help="Folder for the PNGs.")
@options("data")
@click.option("--index", type=int, default=0, show_default=True, help="Val image index (of --data, default digits).")
@click.option("--image", type=click.Path(dir_okay=False, exists=True), default=None, help="An image file instead.")
@click.option("--query", default=None, metavar="ROW,COL", help="Query patch (default: the grid centre).")
@click.option("--blocks", default="3,4,5", show_default=True, help="Blocks to draw (clamped to the model's).")
@click.option("--heads", type=int, default=4, show_default=True, help="Heads to draw (clamped to the model's).")
@click.option("--budgets", default=None, help="Budgets, e.g. 49,20 (default: the model's and ~0.4x it).")
@click.option("--metrics", type=click.Path(dir_okay=False), default=None,
              help="metrics.jsonl for the curves (default: the one beside the checkpoint).")
@options("json")
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

    result = write_figures(checkpoint, output, data=data or "digits", index=index, image=image,
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
    from sparsifiner.workflows import format_demo, run_demo

    settings, kwargs, output, as_json = training_run(recipe, ("teacher", "phase1", "phase2"), assignments, flags)
    export = None
    if not no_export:
        from sparsifiner.export import export_and_validate as export
    summary = run_demo(settings, output, figures=not no_figures, export=export, **kwargs)
    emit(summary, as_json, format_demo(summary))


@cli.command("reg-study")
@train_options
def reg_study(recipe, assignments, **flags):
    """Table 1: phases 1 and 2 with the L2 and the L1 regulariser from one teacher, same budget."""
    from sparsifiner.workflows import format_reg_study, run_regulariser_study

    settings, kwargs, output, as_json = training_run(recipe, ("teacher", "phase1", "phase2"), assignments, flags,
                                                     default_output="runs/reg_study")
    result = run_regulariser_study(settings, output, **kwargs)
    emit(result, as_json, format_reg_study(result))


# --- export and validation ---------------------------------------------------------------------------

@cli.command()
@click.option("--onnx", "onnx_path", required=True, type=click.Path(dir_okay=False), help="Output .onnx file.")
@options(*SOURCE_OPTIONS)
@click.option("--attention", type=click.Choice(["custom", "decomposed", "dense"]), default="custom", show_default=True,
              help="custom: TopKMaskedAttention nodes (+ a standard-op local function); decomposed: standard ops "
                   "only; dense: the teacher with timm's attention.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (17 or later).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--batch", default="dynamic", show_default=True,
              help="A fixed batch size, or the name of a dynamic batch dimension ('dynamic' names it 'batch').")
@options(*SETTINGS_OPTIONS, "json")
def export(onnx_path, checkpoint, model_name, pretrained, img_size, seed, attention, opset, dtype, batch, as_json,
           **flags):
    """Export a Sparsifiner (or its dense teacher) to ONNX (--checkpoint, or --model NAME with random weights)."""
    from sparsifiner.export import ExportSettings, export_onnx, format_export

    source = model_source(checkpoint, model_name, pretrained, img_size, seed, flags)
    data = export_onnx(ExportSettings(source=source, attention=attention, opset=opset, dtype=dtype, batch=batch),
                       onnx_path)
    emit(data, as_json, format_export(data))


@cli.command()
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
              help="The exported .onnx file, run in ONNX Runtime (with --engine: the engine's ONNX file, "
                   "default the one its sidecar records).")
@click.option("--engine", "engine_path", type=click.Path(dir_okay=False), default=None,
              help="A TensorRT engine written by build-engine, run on the GPU (also against ONNX Runtime).")
@click.option("--plugin-lib", type=click.Path(dir_okay=False), default=None,
              help="With --engine: the plugin library. [default: the one its sidecar records]")
@options(*SOURCE_OPTIONS, *SETTINGS_OPTIONS)
@click.option("--batch", type=int, default=None,
              help="Batch size (default: the graph's fixed size, else 4; engines: within the profile).")
@options(*VALIDATE_OPTIONS, "json")
@click.pass_context
def validate(ctx, onnx_path, engine_path, plugin_lib, checkpoint, model_name, pretrained, img_size, seed, batch,
             inputs, num_batches, input_seed, ort_op, atol, rtol, as_json, **flags):
    """Compare an exported graph (ONNX Runtime) or an engine (TensorRT) with PyTorch: error quantiles,
    top-1 agreement, selected keys; exit status 1 when outside tolerance. The PyTorch model is the
    export's own (from the file's metadata) unless --checkpoint or --model is given."""
    from sparsifiner.runtime.validate import source_for_validation

    if onnx_path is None and engine_path is None:
        raise SparsifinerError("give --onnx FILE (ONNX Runtime) or --engine FILE (TensorRT, on a GPU)")
    settings = {k: v for k, v in flags.items() if v is not None}
    common = dict(inputs=inputs, batch=batch, num_batches=num_batches, seed=input_seed, ort_op=ort_op, atol=atol,
                  rtol=rtol)
    if engine_path is None:
        from sparsifiner.runtime.validate import ValidateSettings, format_report, validate_onnx

        source = source_for_validation(onnx_path, checkpoint=checkpoint, model_name=model_name,
                                       pretrained=bool(pretrained), seed=seed, img_size=img_size, settings=settings)
        report = validate_onnx(ValidateSettings(onnx_path=onnx_path, source=source, **common))
        emit(report, as_json, format_report(report))
    else:
        from sparsifiner.runtime.engine_validate import (EngineValidateSettings, engine_onnx_path,
                                                         format_engine_report, validate_engine)

        source = None
        if checkpoint or model_name or settings or pretrained or seed is not None or img_size is not None:
            source = source_for_validation(engine_onnx_path(engine_path, onnx_path), checkpoint=checkpoint,
                                           model_name=model_name, pretrained=bool(pretrained), seed=seed,
                                           img_size=img_size, settings=settings)
        report = validate_engine(EngineValidateSettings(engine_path=engine_path, onnx_path=onnx_path,
                                                        plugin_library=plugin_lib, source=source, **common))
        emit(report, as_json, format_engine_report(report))
    if not report["passed"]:
        ctx.exit(1)


# --- TensorRT: plugin, engines -------------------------------------------------------------------

@cli.command("build-plugin")
@click.option("--tensorrt-include", type=click.Path(file_okay=False), default=None,
              help="TensorRT's include folder (or its root). [default: $TENSORRT_ROOT, system paths, kernel-lens]")
@click.option("--arch", "archs", default="80,90", show_default=True, help="SM versions to compile for, comma-separated.")
@click.option("--output", type=click.Path(), default=None, help="Also copy the library here (a file or folder).")
@click.option("--force", is_flag=True, help="Rebuild even when the cache has it.")
@options("json")
def build_plugin_command(tensorrt_include, archs, output, force, as_json):
    """Build the TopKMaskedAttention TensorRT plugin library (nvcc), cached by source hash."""
    from sparsifiner.runtime.plugin_build import PluginBuildSettings, build_plugin, format_plugin_build

    settings = PluginBuildSettings(tensorrt_include=tensorrt_include, archs=tuple(archs.split(",")), output=output,
                                   force=force)
    result = build_plugin(settings, progress=None if as_json else lambda text: click.echo(text, err=True))
    emit(result, as_json, format_plugin_build(result))


@cli.command("build-engine")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "engine_path", type=click.Path(dir_okay=False), default=None,
              help="Engine file (a JSON sidecar goes beside it). [default: MODEL.engine]")
@click.option("--backend", type=click.Choice(["auto", "trt", "rtx"]), default="auto", show_default=True,
              help="auto: TensorRT when installed, else TensorRT-RTX.")
@click.option("--min", "min_batch", type=int, default=None, help="Smallest batch of the profile. [default: 1]")
@click.option("--opt", "opt_batch", type=int, default=None, help="Batch the profile is tuned for. [default: 4]")
@click.option("--max", "max_batch", type=int, default=None, help="Largest batch of the profile. [default: 8]")
@click.option("--workspace", "workspace_mib", type=int, default=None, help="Builder workspace limit in MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Timing cache file, read before and written after the build (needs a GPU with TensorRT-RTX).")
@click.option("--builder-optimization-level", "optimization_level", type=int, default=None, help="0-5. [default: 3]")
@click.option("--compute-capability", default=None,
              help="TensorRT-RTX target: sm75, sm80, sm86, sm89, sm120, sm121 or current (no sm90).")
@click.option("--plugin-lib", type=click.Path(dir_okay=False), default=None,
              help="The plugin library. [default: build it (cached)]")
@click.option("--no-plugin", is_flag=True, help="Build TopKMaskedAttention nodes from their local function instead.")
@click.option("--tf32", is_flag=True, help="Allow TF32 math in an fp32 graph.")
@click.option("--no-progress", is_flag=True, help="No progress display.")
@click.option("--json", "as_json", is_flag=True, help="Print the sidecar as JSON.")
def build_engine_command(onnx_path, engine_path, backend, min_batch, opt_batch, max_batch, workspace_mib, timing_cache,
                         optimization_level, compute_capability, plugin_lib, no_plugin, tf32, no_progress, as_json):
    """Build a TensorRT engine (strongly typed: the graph's precision) with the plugin for custom nodes."""
    from sparsifiner.runtime.engine_build import EngineBuildSettings, ProgressDisplay, build_engine_file
    from sparsifiner.runtime.engine_file import format_sidecar

    progress = not (no_progress or as_json)
    settings = EngineBuildSettings(
        onnx_path=onnx_path, engine_path=engine_path, backend=backend, min_batch=min_batch, opt_batch=opt_batch,
        max_batch=max_batch, workspace_mib=workspace_mib, timing_cache=timing_cache,
        optimization_level=optimization_level, compute_capability=compute_capability, plugin_library=plugin_lib,
        use_plugin=not no_plugin, tf32=tf32, progress=progress)
    sidecar = build_engine_file(settings, ProgressDisplay() if progress else None)
    emit(sidecar, as_json, format_sidecar(sidecar))


# --- calibration and profiling ------------------------------------------------------------------

@cli.command()
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False), default=None,
              help="The Q/DQ graph (a JSON sidecar goes beside it). [default: MODEL.<mode>.onnx]")
@options("data")
@click.option("--mode", default="int8", show_default=True, help="int8 or fp8 (E4M3).")
@click.option("--method", default=None,
              help="Calibration: minmax, entropy or percentile (int8); distribution (fp8). [default: minmax / distribution]")
@click.option("--samples", type=int, default=256, show_default=True, help="Calibration images.")
@options("batch_size", "limit")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@options("json")
def calibrate(onnx_path, output_path, data, mode, method, samples, batch_size, limit, no_progress, as_json):
    """Quantise an export to explicit Q/DQ (TensorRT placement; custom op and predictor stay float) with
    ONNX Runtime; report top-1 agreement, accuracy and logit error against float. --data: demo (digits:
    train calibrates, val reports) or an image folder (with train/ and val/: train/ calibrates, val/ reports)."""
    from pathlib import Path

    from sparsifiner.calib import CalibrateSettings, calibrate as run_calibration, format_calibration

    settings = CalibrateSettings(onnx_path, output_path or str(Path(onnx_path).with_suffix(f".{mode}.onnx")),
                                 data="demo" if data in (None, "digits", "demo") else data, mode=mode, method=method,
                                 samples=samples, batch=batch_size or 16, eval_limit=limit,
                                 progress=not (no_progress or as_json))
    summary = run_calibration(settings)
    emit(summary, as_json, format_calibration(summary))


@cli.command()
@click.argument("targets", nargs=-1, metavar="MODEL[@OPTIONS] ...")
@click.option("--compare", is_flag=True,
              help="Measure several targets interleaved in one process; ratios to the first of each input shape.")
@click.option("--batch", "batches", default="1", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--warmup", type=float, default=200.0, show_default=True, help="Warm-up ms per target (>= 1 run).")
@click.option("--duration", type=float, default=3.0, show_default=True, help="Seconds of measurement per batch size.")
@click.option("--iterations", type=int, default=10, show_default=True, help="At least this many rounds per batch size.")
@click.option("--layer-iterations", type=int, default=20, show_default=True, help="Engines: IProfiler launches (0: none).")
@options("inputs", "input_seed", "ort_op", "threads", "device")
@click.option("-o", "--output", "prefix", type=click.Path(dir_okay=False), default=None,
              help="Write PREFIX.json, PREFIX.png and per engine PREFIX.N.profile.json (trtexec --exportProfile).")
@click.option("--no-plot", is_flag=True, help="No PNG.")
@options("json")
def profile(targets, compare, batches, warmup, duration, iterations, layer_iterations, inputs, input_seed, ort_op,
            threads, device, prefix, no_plot, as_json):
    """Latency percentiles, throughput and memory of deployed models: MODEL.onnx in ONNX Runtime
    (@cpu, @cuda, @OP-BACKEND such as @extensions, @torch, @compile), a checkpoint in PyTorch
    (@eager, @compile), an engine in TensorRT (@graph, @nograph; per-layer times, plugin share)."""
    from sparsifiner.runtime.profile import ProfileSettings, parse_batches, run_profile
    from sparsifiner.runtime.profile_report import check_prefix, format_profile, write_outputs

    if len(targets) > 1 and not compare:
        raise SparsifinerError("several models: add --compare to measure them side by side")
    if prefix:
        check_prefix(prefix)
    settings = ProfileSettings(targets=tuple(targets), batches=parse_batches(batches), warmup_ms=warmup,
                               duration=duration, iterations=iterations, layer_iterations=layer_iterations,
                               threads=threads, device=device, default_op_backend=ort_op, inputs=inputs,
                               seed=input_seed)
    report = run_profile(settings, progress=None if as_json else lambda text: click.echo(text, err=True))
    if prefix:
        write_outputs(report, prefix, plot=not no_plot)
    emit(report, as_json, format_profile(report) + (f"\nwrote {', '.join(report['files'])}" if prefix else ""))


def main() -> None:
    """Console entry point."""
    cli(prog_name="sparsifiner")


if __name__ == "__main__":
    main()
