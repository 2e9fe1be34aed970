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
    out      [B, H, N, d]   T; in torch a new contiguous tensor whatever the inputs' strides
TensorRT
    The plugin is (OP_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE). Custom nodes carry the
    string attributes ``plugin_namespace`` and ``plugin_version`` (PLUGIN_NODE_ATTRIBUTES):
    TensorRT's ONNX parser reads them to find the plugin, and without them TensorRT-RTX
    inlines the node's local function instead. They are not attributes of the op.
Rows i < c: dense softmax attention. Row i >= c: s = coef[i - c] @ basis; keep the
``budget`` largest s_j (ties go to the lower key index j); softmax of scale * q_i . k_j
over the kept j only, accumulated in fp32; weighted sum of the kept v_j.
Exact scores (the precondition every implementation may rely on for agreement)
    Models with ``exact_scores`` (the default; ``sparsifiner.ops.grid``) feed the op
    coef in {k * 2^-10 : k integer, 0 <= k <= 2^10}, each row's k summing to at most
    2^10 + R/2, in fp32 or fp16; and, for every key column j, basis[:, j] = m_rj * 2^e_j
    with integers |m_rj| <= 127 and e_j >= -24. Every product and partial sum of a score
    is then exactly representable in fp32, so s is bit-identical in any summation order,
    with or without FMA, and with fp16 or TF32 products accumulated in fp32 (not bf16:
    it cannot hold the coef grid); the selected keys are identical across implementations.
    The rounding happens on the model side, before the op: the basis is quantised when
    it is pruned (a constant of the graph) and coef is rounded half to even in the
    forward pass (the exported graph carries it as Mul, Round, Mul). Implementations
    must stay correct and crash-free on inputs off the grid (``exact_scores=False``,
    the authors' float behaviour), where near-ties may resolve differently.
"""
from dataclasses import dataclass
from typing import Optional, Union

OP_NAME = "TopKMaskedAttention"
OP_DOMAIN = "sparsifiner"
OP_VERSION = 1
# The name the torch.library custom op is registered under (namespace::name).
TORCH_OP_NAMESPACE = "sparsifiner"
TORCH_OP_NAME = "topk_masked_attention"

# TensorRT plugin identity, and the node attributes that name it for the ONNX parser.
PLUGIN_NAMESPACE = OP_DOMAIN
PLUGIN_VERSION = str(OP_VERSION)
ATTR_PLUGIN_NAMESPACE = "plugin_namespace"
ATTR_PLUGIN_VERSION = "plugin_version"
PLUGIN_NODE_ATTRIBUTES = {ATTR_PLUGIN_NAMESPACE: PLUGIN_NAMESPACE, ATTR_PLUGIN_VERSION: PLUGIN_VERSION}

INPUT_NAMES = ("q", "k", "v", "coef", "basis")
OUTPUT_NAMES = ("out",)
SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Attribute:
    """One attribute of the op: its name, type ("int" or "float"), default and meaning.

    ONNX stores "int" as INT (int64) and "float" as FLOAT; TensorRT's plugin creator
    advertises them as kINT32 and kFLOAT32. ``default`` None means required.
    """

    name: str
    type: str
    doc: str
    default: Optional[Union[int, float]] = None

    @property
    def python_type(self) -> type:
        return int if self.type == "int" else float

    def convert(self, value) -> Union[int, float]:
        return self.python_type(value)


ATTR_BUDGET = "budget"
ATTR_SCALE = "scale"
ATTR_CLS_ROWS = "cls_rows"
DEFAULT_CLS_ROWS = 1
# The attributes in their canonical order: the ONNX node, the local function, the ONNX
# Runtime op and the TensorRT plugin's field list all follow this table.
ATTRIBUTES = (
    Attribute(ATTR_BUDGET, "int", "keys kept per non-CLS row, 1 <= budget <= N"),
    Attribute(ATTR_SCALE, "float", "logit scale, usually head_dim ** -0.5"),
    Attribute(ATTR_CLS_ROWS, "int", "leading rows that attend densely", DEFAULT_CLS_ROWS),
)
ATTRIBUTE_NAMES = tuple(a.name for a in ATTRIBUTES)
ATTRIBUTE_BY_NAME = {a.name: a for a in ATTRIBUTES}


def typed_attributes(values: dict) -> dict:
    """``values`` converted to the attributes' types, defaults filled in; unknown or missing names raise."""
    unknown = sorted(set(values) - set(ATTRIBUTE_NAMES))
    if unknown:
        raise ValueError(f"unknown {OP_NAME} attributes {unknown}; the op has {list(ATTRIBUTE_NAMES)}")
    out = {}
    for attr in ATTRIBUTES:
        if attr.name in values:
            out[attr.name] = attr.convert(values[attr.name])
        elif attr.default is not None:
            out[attr.name] = attr.default
        else:
            raise ValueError(f"{OP_NAME} needs the attribute {attr.name!r} ({attr.doc})")
    return out
