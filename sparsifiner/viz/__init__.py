"""Figures of the supplementary as PNGs (matplotlib, Agg backend): attention masks and heatmaps
(``attention_figure``), the pruned basis (``basis_figure``) and training curves
(``curves_figure``). ``write_figures`` draws the set for one checkpoint."""
from sparsifiner.viz.attention import attention_figure, clamp_blocks, default_budgets
from sparsifiner.viz.basis import basis_figure
from sparsifiner.viz.curves import curves_figure
from sparsifiner.viz.figures import write_figures

__all__ = ["attention_figure", "basis_figure", "clamp_blocks", "curves_figure", "default_budgets", "write_figures"]
