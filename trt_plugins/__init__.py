"""C++/CUDA sources of the TopKMaskedAttention kernel and TensorRT plugin.

Installed as ``sparsifiner.trt_plugins`` so the sources ship with the package and the
torch extension can be built on demand (see ``sparsifiner.ops.cuda_binding``).
"""
from sparsifiner._namespace import require_namespace

require_namespace(__name__, "sparsifiner.trt_plugins")

