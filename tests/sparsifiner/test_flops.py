"""MAC counts against hand arithmetic and the paper's dense DeiT-S figure."""
import pytest

from sparsifiner.model.flops import block_macs, count_flops
from sparsifiner.settings import SparsifinerSettings


def test_block_macs_by_hand():
    m = block_macs(n=197, c=1, embed=384, heads=6, head_dim=64, hidden=1536, rank=32, reduced=32, budget=49,
                   coef_density=1.0, basis_density=1.0)
    assert m["dense"]["mhsa"] == 2 * 6 * 197 * 197 * 64
    assert m["sparsifiner"]["mhsa"] == 2 * 6 * (197 + 196 * 49) * 64
    assert m["dense"]["qkv_proj"] == 4 * 197 * 384 * 384
    assert m["sparsifiner"]["predictor"] == 6 * 393 * 64 * 32 + 6 * 32 * 197 * 32 + 6 * 196 * 32 * 32 + 6 * 196 * 32 * 197


def test_deit_small_matches_the_paper():
    data = count_flops("deit_small_patch16_224", SparsifinerSettings(keep_rate=0.25))
    assert data["budget"] == 49 and data["tokens"] == 197 and len(data["blocks"]) == 12
    assert data["total"]["dense"]["total"] / 1e9 == pytest.approx(4.6, abs=0.01)
    assert 0.48 <= data["reduction"]["mhsa"] <= 0.69  # the paper's range, at its reported densities
    per_block = sum(b["sparsifiner"]["total"] for b in data["blocks"])
    assert data["total"]["sparsifiner"]["total"] == pytest.approx(per_block + data["total"]["sparsifiner"]["other"])


def test_budget_and_densities_move_the_counts():
    full = count_flops("deit_tiny_patch16_224", SparsifinerSettings(budget=197), coef_density=1, basis_density=1)
    assert full["reduction"]["mhsa_without_predictor"] == pytest.approx(0.0, abs=1e-9)
    sparse = count_flops("deit_tiny_patch16_224", SparsifinerSettings(budget=20), coef_density=0.1, basis_density=0.1)
    assert sparse["reduction"]["mhsa"] > 0.6
    assert sparse["assumptions"]["basis_source"] == "given"


def test_tile_selection_macs():
    """Tile selection at C costs C/B of row selection's MHSA at B; its scores are per tile."""
    args = dict(n=197, c=1, embed=384, heads=6, head_dim=64, hidden=1536, rank=32, reduced=32, budget=49,
                coef_density=0.25, basis_density=0.5)
    row = block_macs(**args)["sparsifiner"]
    tile = block_macs(**args, selection="tile", tiles=4, tile_budget=98)["sparsifiner"]
    two = block_macs(**args, selection="two_level", tiles=4, tile_budget=98)["sparsifiner"]
    assert tile["mhsa"] - 2 * 6 * 197 * 64 == 2 * (row["mhsa"] - 2 * 6 * 197 * 64)
    assert two["mhsa"] == row["mhsa"]
    fixed = row["predictor"] - 6 * 196 * 8 * 98.5
    assert tile["predictor"] - fixed == pytest.approx(6 * 196 * 8 + 6 * 4 * 32 * 98.5)
    assert two["predictor"] - tile["predictor"] == pytest.approx(6 * 196 * 8 * 49)
    data = count_flops("deit_small_patch16_224", SparsifinerSettings(selection="tile", tile_factor=2.0))
    assert (data["tile"], data["tile_budget"], data["keys_per_row"]) == ([8, 8], 98, 98)
    assert data["blocks"][0]["keys_per_row"] == 98
