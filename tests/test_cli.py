"""The core CLI through click's CliRunner: version, help, info, flops and one-line errors."""
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from sparsifiner import __version__
from sparsifiner.cli import cli


@pytest.fixture()
def run():
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, list(args))


def test_version(run):
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_every_command_has_help(run):
    assert {"info", "flops"} <= set(cli.commands)
    for name in cli.commands:
        result = run(name, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output, name


def test_help_does_not_import_torch():
    code = "import sys; from sparsifiner.cli import cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("model,size,tokens,budget", [
    ("deit_tiny_patch16_224", 224, 197, 49),
    ("deit_small_patch16_224", 384, 577, 144),
    ("vit_base_patch16_224", 224, 197, 49),
])
def test_info(run, model, size, tokens, budget):
    result = run("info", "--model", model, "--img-size", str(size), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["tokens"], data["budget"], data["blocks"]) == (tokens, budget, 12)
    assert data["parameters"]["predictor"] > 0


def test_info_table(run):
    result = run("info", "--model", "deit_tiny_patch16_224", "--budget", "20")
    assert result.exit_code == 0 and "20 keys per query" in result.output


def test_info_and_flops_tile_selection(run):
    result = run("info", "--selection", "tile", "--tile-budget", "98")
    assert "tile: 8x8 tiles of the 14x14 grid, C = 98 keys per tile, 98 per query" in result.output
    data = json.loads(run("flops", "--selection", "tile", "--json").output)
    assert (data["selection"], data["tile"], data["keys_per_row"]) == ("tile", [8, 8], 49)


def test_flops_table_and_json(run):
    result = run("flops", "--model", "deit_small_patch16_224", "--keep-rate", "0.25")
    assert result.exit_code == 0, result.output
    assert "MHSA reduction" in result.output and result.output.count("\n    ") >= 10
    data = json.loads(run("flops", "--model", "deit_small_patch16_224", "--json").output)
    assert len(data["blocks"]) == 12 and data["budget"] == 49


def test_flops_from_checkpoint_measures_basis(run, tmp_path):
    from sparsifiner.model import prune_basis
    from sparsifiner.model.io import save_sparsifiner
    from sparsifiner.model.zoo import create_demo_sparsifiner

    model = create_demo_sparsifiner()
    prune_basis(model)
    path = save_sparsifiner(model, tmp_path / "demo.safetensors")
    data = json.loads(run("flops", "--checkpoint", str(path), "--json").output)
    assert data["assumptions"]["basis_source"] == "measured from checkpoint" and data["tokens"] == 65


@pytest.mark.parametrize("args,message", [
    (["info", "--model", "not_a_model"], "unknown model name"),
    (["info", "--keep-rate", "0"], "keep_rate must be in (0, 1]"),
    (["info", "--model", "deit_tiny_patch16_224", "--budget", "500"], "above the number of keys"),
    (["flops", "--checkpoint", "missing.safetensors"], "checkpoint not found"),
    (["flops", "--selection", "tile", "--tile-rows", "16", "--tile-cols", "16"], "stay exact"),
    (["info", "--selection", "two_level", "--tile-budget", "10"], "tile budget >= budget"),
])
def test_bad_input_is_one_line_and_exit_2(run, args, message):
    result = run(*args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
