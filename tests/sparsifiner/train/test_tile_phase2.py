"""Phase 2 fine-tunes with tile-shared selection; evaluation, figures and FLOPs describe it."""
from __future__ import annotations

import pytest
import torch

from sparsifiner.model.io import load_sparsifiner
from sparsifiner.model.sparsify import collect_aux, sparse_layers
from sparsifiner.op_spec import Selection
from sparsifiner.ops import select_mask


def test_phase2_with_tile_selection(phase_runs, tiny, tmp_path):
    from sparsifiner.train.runner import run_training

    out, _ = phase_runs
    settings = tiny(**{"sparsifiner.selection": "tile", "sparsifiner.tile_rows": 4, "sparsifiner.tile_cols": 4,
                       "sparsifiner.tile_budget": 24, "phase2.epochs": 1})
    summary = run_training(settings.replace(checkpoint=str(out / "phase1.safetensors")), "2", tmp_path,
                           progress=False)["phase2"]
    assert (summary["selection"], summary["budget"], summary["keys_per_row"]) == ("tile", 16, 24)
    assert summary["mask_density"] == pytest.approx((65 + 64 * 24) / 65 ** 2)
    assert 0.3 < summary["selection_recall"] < 1.0  # the tile's keys hold most, not all, of each row's top-16
    assert summary["row_oracle_recall"] < summary["oracle_recall"]  # 24 keys hold more mass than 16
    assert 0.0 < summary["recall"] <= summary["oracle_recall"] + 1e-6
    assert summary["top1"] > 50.0

    model = load_sparsifiner(tmp_path / "phase2.safetensors").eval()
    layer = sparse_layers(model)[0]
    assert layer.selection == Selection("tile", 8, 4, 4, 24)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), collect_aux(model) as records:
        explicit = model(images)
    with torch.no_grad():
        assert torch.allclose(model(images), explicit, atol=1e-5)  # the op path attends to the same keys
    aux = records[0]
    assert torch.equal(aux["mask"], select_mask(aux["coef"], aux["basis"], 16, layer.selection))
    tiles = aux["mask"][0, 0].reshape(2, 4, 2, 4, 65).permute(0, 2, 1, 3, 4).reshape(4, 16, 65)
    assert (tiles == tiles[:, :1]).all()  # the 16 queries of a 4x4 tile keep the same keys

    from sparsifiner.viz import attention_figure

    path = attention_figure(model, images[0], images[0].clamp(0, 1), (5, 6), 16, tmp_path / "tile.png", [0, 1], 1)
    assert path.stat().st_size > 1000
