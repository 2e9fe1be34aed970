"""The contract of the custom op, defined once.

``sparsifiner::TopKMaskedAttention`` version 1 is implemented four times: the eager
PyTorch reference (the spec, ``sparsifiner.ops.reference``), the ONNX node and its
local-function body (``sparsifiner.export``), the CUDA kernel and the TensorRT plugin
(``trt_plugins/``). A test checks the C++ constants against these.

Inputs
    q, k, v  [B, H, N, d]   T in {float, float16, bfloat16}
    coef     [B, H, N-c, R] pruned basis coefficients of the non-CLS rows
    basis    [R, N]         pruned W_up (an initializer in ONNX)
Attributes
    budget   int    keys kept per non-CLS row, 1 <= budget <= N
    scale    float  logit scale, usually d ** -0.5
    cls_rows int    c, the leading rows that attend densely (default 1)
Output
    out      [B, H, N, d]
Rows i < c: dense softmax attention. Row i >= c: s = coef[i - c] @ basis; keep the
``budget`` largest s_j (ties go to the lower key index j); softmax of scale * q_i . k_j
over the kept j only, accumulated in fp32; weighted sum of the kept v_j.
"""
from dataclasses import dataclass

OP_NAME = "TopKMaskedAttention"
OP_DOMAIN = "sparsifiner"
OP_VERSION = 1
# The name the torch.library custom op is registered under (namespace::name).
TORCH_OP_NAMESPACE = "sparsifiner"
TORCH_OP_NAME = "topk_masked_attention"

INPUT_NAMES = ("q", "k", "v", "coef", "basis")
OUTPUT_NAMES = ("out",)
ATTR_BUDGET = "budget"
ATTR_SCALE = "scale"
ATTR_CLS_ROWS = "cls_rows"
ATTRIBUTE_NAMES = (ATTR_BUDGET, ATTR_SCALE, ATTR_CLS_ROWS)
DEFAULT_CLS_ROWS = 1
SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class OpAttributes:
    """The op's attributes, validated against the shapes they will be used with."""

    budget: int
    scale: float
    cls_rows: int = DEFAULT_CLS_ROWS

    def check(self, num_tokens: int) -> "OpAttributes":
        from sparsifiner.errors import SparsifinerError

        if not 1 <= self.budget <= num_tokens:
            raise SparsifinerError(
                f"budget {self.budget} is out of range: it must be between 1 and the number of keys ({num_tokens})"
            )
        if not 0 <= self.cls_rows < num_tokens:
            raise SparsifinerError(f"cls_rows {self.cls_rows} must be in [0, {num_tokens})")
        if not self.scale > 0:
            raise SparsifinerError(f"scale must be positive, got {self.scale}")
        return self
