"""Building blocks: the connectivity predictor and the sparse attention layer."""
from sparsifiner.layers.predictor import ConnectivityPredictor, prune_basis_tensor, prune_coefficients
from sparsifiner.layers.sparse_attention import SparsifinerAttention

__all__ = ["ConnectivityPredictor", "SparsifinerAttention", "prune_basis_tensor", "prune_coefficients"]
