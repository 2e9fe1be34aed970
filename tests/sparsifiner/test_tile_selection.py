"""Tile-shared selection (op version 2) against a brute-force spelling of the contract.

Inputs are on the exact-score grids (sparsifiner.ops.grid) with many exact ties: duplicate
key columns and pruned coefficient rows. The brute force sums scores in float64 and sorts
by (score descending, key index ascending), so any difference is a rule violation.
"""
import pytest
import torch

from sparsifiner.errors import SparsifinerError
from sparsifiner.op_spec import Selection, max_exact_tile_rows
from sparsifiner.ops import quantize_basis, round_coefficients, select_mask, selected_attention, topk_mask
from sparsifiner.ops.grid import BASIS_CODE_MAX, COEF_STEP
from sparsifiner.ops.reference import connectivity_scores, full_mask, masked_attention
from sparsifiner.ops.tile import tile_index, tile_scores, union_fraction
from sparsifiner.settings import SparsifinerSettings


def grid_inputs(b, h, gh, gw, rank=8, cls_rows=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows, n = gh * gw, gh * gw + cls_rows
    coef = torch.softmax(3 * torch.randn(b, h, rows, rank, generator=g), -1)
    coef = round_coefficients(torch.where(coef > 0.1, coef, torch.zeros_like(coef)))
    coef[:, :, :3] = 0  # rows whose scores all tie at 0
    basis = torch.rand(rank, n, generator=g) * (torch.rand(rank, n, generator=g) > 0.6)
    basis[:, n // 2: n // 2 + 4] = basis[:, 1:5]  # duplicate key columns: exact ties
    return coef, quantize_basis(basis)


def brute_force(coef, basis, budget, sel):
    """The contract spelled out per tile and row, in float64."""
    rows, n = coef.shape[-2], basis.shape[-1]
    gw = sel.grid_cols
    gh = rows // gw
    s = coef.double() @ basis.double()
    mask = torch.zeros(*coef.shape[:-1], n, dtype=torch.bool)
    c = sel.tile_budget or budget
    for ty in range(0, gh, sel.tile_rows):
        for tx in range(0, gw, sel.tile_cols):
            members = [y * gw + x for y in range(ty, min(ty + sel.tile_rows, gh))
                       for x in range(tx, min(tx + sel.tile_cols, gw))]
            for idx in torch.cartesian_prod(*(torch.arange(d) for d in coef.shape[:-2])).reshape(-1, coef.dim() - 2):
                lead = tuple(idx.tolist())
                t = s[lead][members].sum(0).tolist()
                top = sorted(range(n), key=lambda j: (-t[j], j))[:c]
                for i in members:
                    if sel.mode == "tile":
                        keep = top
                    else:
                        row = s[lead][i].tolist()
                        keep = sorted(top, key=lambda j: (-row[j], j))[:budget]
                    mask[lead + (i,)][keep] = True
    return mask


@pytest.mark.parametrize("mode", ["tile", "two_level"])
@pytest.mark.parametrize("gh,gw,tile,budget,c", [
    (8, 8, (4, 4), 16, 24),    # the demo's grid
    (14, 14, (8, 8), 49, 98),  # DeiT-S: partial edge tiles 8x6, 6x8, 6x6
    (6, 10, (4, 3), 5, 5),     # non-square grid, C = B
    (5, 5, (8, 8), 3, 7),      # tile larger than the grid: one partial tile
])
def test_selection_matches_brute_force(mode, gh, gw, tile, budget, c):
    coef, basis = grid_inputs(1, 2, gh, gw, seed=gh * gw)
    sel = Selection(mode, gw, *tile, c)
    got = select_mask(coef, basis, budget, sel)
    assert torch.equal(got, brute_force(coef, basis, budget, sel))
    assert (got.sum(-1) == (c if mode == "tile" else budget)).all()


def test_one_row_tiles_are_row_selection():
    coef, basis = grid_inputs(2, 2, 6, 6)
    row = topk_mask(connectivity_scores(coef, basis), 9)
    assert torch.equal(select_mask(coef, basis, 9, Selection("tile", 6, 1, 1, 9)), row)
    assert torch.equal(select_mask(coef, basis, 9, Selection("two_level", 6, 4, 4, 37)), row)  # C = N


def test_partial_tiles_and_union():
    tile, count = tile_index(196, Selection("tile", 14, 8, 8, 1))
    assert count == 4 and torch.bincount(tile).tolist() == [64, 48, 48, 36]
    coef, basis = grid_inputs(1, 1, 8, 8)
    sel = Selection("tile", 8, 4, 4, 16)
    assert union_fraction(select_mask(coef, basis, 16, sel), sel) == pytest.approx(16 / 65)


def test_tile_scores_exact_at_the_bound():
    """The largest values a 64-row tile can meet on the grids sum exactly in fp32, in any order."""
    rank = 32
    assert max_exact_tile_rows(rank) == 127
    g = torch.Generator().manual_seed(0)
    draws = torch.randint(0, rank, (64, 1024 + rank // 2), generator=g)
    codes = torch.stack([torch.bincount(d, minlength=rank) for d in draws]).float()  # rows sum to 2^10 + R/2
    coef = codes * COEF_STEP
    signs = torch.where(torch.rand(rank, 5, generator=g) > 0.3, 1.0, -1.0)
    basis = signs * BASIS_CODE_MAX * 2.0 ** torch.tensor([-7.0, -3, 0, 2, -24])
    t = tile_scores(coef, basis, torch.zeros(64, dtype=torch.long), 1)[0]
    assert torch.equal(t.double(), (coef.double() @ basis.double()).sum(0))
    rows = coef @ basis  # the sum of the row scores, in two orders
    assert torch.equal(t, rows.sum(0)) and torch.equal(t, rows.flip(0).cumsum(0)[-1])


def test_reference_op_and_gradients():
    coef, basis = grid_inputs(1, 2, 4, 4, rank=4)
    q, k, v = (torch.randn(1, 2, 17, 8, requires_grad=True) for _ in range(3))
    sel = Selection("tile", 4, 2, 2, 6)
    out = selected_attention(q, k, v, coef, basis, 4, 0.3, 1, sel)
    expected = masked_attention(q, k, v, full_mask(select_mask(coef, basis, 4, sel)), 0.3)
    assert torch.equal(out, expected)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    with torch.no_grad():  # the registered op (inference path)
        assert torch.allclose(selected_attention(q, k, v, coef, basis, 4, 0.3, 1, sel), expected, atol=0, rtol=0)


@pytest.mark.parametrize("sel,budget,message", [
    (Selection("tile", 0, 2, 2, 4), 4, "not a square patch grid"),
    (Selection("two_level", 5, 2, 2, 3), 4, "budget <= tile budget"),
    (Selection("tile", 5, 2, 2, 99), 4, "tile budget 99 is out of range"),
])
def test_bad_selection_is_one_line_error(sel, budget, message):
    coef = torch.zeros(1, 1, 15, 4)
    q = torch.zeros(1, 1, 16, 8)
    with pytest.raises(SparsifinerError, match=message):
        selected_attention(q, q, q, coef, torch.ones(4, 16), budget, 1.0, 1, sel)


def test_settings_checks():
    with pytest.raises(SparsifinerError, match="stay exact"):
        SparsifinerSettings(selection="tile", tile_rows=16, tile_cols=8)
    SparsifinerSettings(selection="tile", tile_rows=16, tile_cols=8, exact_scores=False)
    with pytest.raises(SparsifinerError, match="selection must be one of"):
        SparsifinerSettings(selection="block")
    s = SparsifinerSettings(selection="tile", tile_factor=1.5)
    assert (s.resolve_budget(197), s.resolve_tile_budget(197)) == (49, 74)
    with pytest.raises(SparsifinerError, match="tile budget >= budget"):
        SparsifinerSettings(selection="two_level", tile_budget=10).check_tokens(197)


def test_layer_grid_follows_the_model_and_resize():
    from sparsifiner.model import create_sparsifiner
    from sparsifiner.model.resize import resize_sparsifiner
    from sparsifiner.model.sparsify import sparse_layers

    settings = SparsifinerSettings(selection="two_level", tile_factor=2.0)
    model = create_sparsifiner("deit_tiny_patch16_224", settings, depth=1, img_size=(224, 160))
    layer = sparse_layers(model)[0]
    assert layer.grid_size == (14, 10) and layer.selection == Selection("two_level", 10, 8, 8, 70)
    assert layer.keys_per_row == 35  # B = ceil(0.25 x 140 patches), C = 2B
    resize_sparsifiner(model, 256)
    assert layer.grid_size == (16, 16) and (layer.budget, layer.tile_budget) == (64, 128)
    out = model.eval()(torch.randn(1, 3, 256, 256))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("layout", ["contiguous", "qkv_views"])
def test_v2_op_passes_opcheck(layout):
    """The version-2 op's schema, fake implementation (contiguous output, as the reference's)
    and dispatch pass torch.library.opcheck, in tile and two-level modes."""
    checks = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    b, h, side, d = 2, 3, 4, 8
    n = side * side + 1
    if layout == "contiguous":
        q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    else:
        q, k, v = torch.randn(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
    coef = torch.rand(b, h, n - 1, 5)
    coef = torch.where(coef > 0.4, coef, torch.zeros_like(coef))
    basis = torch.rand(5, n)
    op = torch.ops.sparsifiner.topk_masked_attention_v2.default
    for mode in (1, 2):  # op_spec.SELECTION_MODES: tile, two_level
        args = (q, k, v, coef, basis, 4, 0.35, 1, mode, side, 2, 2, 6)
        results = torch.library.opcheck(op, args, test_utils=checks, raise_exception=False)
        assert results == {name: "SUCCESS" for name in checks}, mode
