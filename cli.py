"""The ``sparsifiner`` command line: a thin click layer over the library.

Each command parses flags, builds a settings object, calls one library function and
prints a short summary (or ``--json``). Heavy imports (torch, timm, onnx) happen
inside the commands so ``--help`` is instant. Bad input raises SparsifinerError,
which ``main`` prints as one line on stderr with exit status 2.
"""
from __future__ import annotations

import json

import click

from sparsifiner import __version__
from sparsifiner.errors import SparsifinerError

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
@click.option("--inputs", default="random", show_default=True, help="'random', or a folder of images.")
@click.option("--batch", type=int, default=None, help="Batch size (default: the graph's fixed size, else 4).")
@click.option("--num-batches", type=int, default=2, show_default=True, help="Batches of random inputs.")
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
