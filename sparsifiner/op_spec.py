"""The contract of the custom op, defined once.

``sparsifiner::TopKMaskedAttention`` version 1 is implemented four times: the eager
PyTorch reference (the spec, ``sparsifiner.ops.reference``), the ONNX node and its
local-function body (``sparsifiner.export``), the CUDA kernel and the TensorRT plugin
(``trt_plugins/``). A test checks the C++ constants against these. Version 2 adds
tile-shared selection (below); it has the reference and the ONNX function only so far.

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
Version 2: selection shared by a tile of query rows (opt-in; a departure from the paper)
    Attributes of version 1, plus ``selection`` (0 row, 1 tile, 2 two_level; default 0),
    ``grid_cols`` (width of the patch grid the N-c non-CLS rows lie on in row-major order;
    0: square), ``tile_rows`` x ``tile_cols`` (tile shape on that grid, default 8 x 8) and
    ``tile_budget`` C (default 0: C = budget). With selection 0 the node is version 1.
    Tiles cover the grid from the top-left corner; the last tile row and column are
    partial when the tile does not divide the grid (DeiT-S, 14 x 14 in 8 x 8 tiles: 8x8,
    8x6, 6x8 and 6x6 tiles). A partial tile is a tile with fewer rows, nothing else.
    Tile score of key j: t_j = sum over the tile's rows i of s_ij, computed as
    (sum_i coef[i - c]) @ basis[:, j]. On the exact-score grids that equals the sum of the
    row scores bit for bit, in any order, while P (2^10 + R/2) 127 < 2^24 for a tile of P
    rows (P <= 127 at R = 32; ``SparsifinerSettings`` refuses larger tiles). The tile's
    top-C: the C keys with the largest t_j, ties to the lower key index.
    tile (1): every row of the tile keeps exactly the tile's top-C (C keys per row).
    two_level (2): row i keeps the ``budget`` keys with the largest s_ij among its tile's
    top-C, ties to the lower key index (budget <= C). CLS rows attend densely in all modes.
    Keys (CLS included) are all candidates; only query rows are tiled.
"""
from dataclasses import dataclass
from typing import Optional, Union

OP_NAME = "TopKMaskedAttention"
OP_DOMAIN = "sparsifiner"
OP_VERSION = 1
# The name the torch.library custom op is registered under (namespace::name).
TORCH_OP_NAMESPACE = "sparsifiner"
TORCH_OP_NAME = "topk_masked_attention"
# Version 2 (tile-shared selection) and its torch.library op.
OP_VERSION_TILE = 2
TORCH_OP_NAME_TILE = "topk_masked_attention_v2"

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


# --- version 2: tile-shared selection ------------------------------------------------------------

ATTR_SELECTION = "selection"
ATTR_GRID_COLS = "grid_cols"
ATTR_TILE_ROWS = "tile_rows"
ATTR_TILE_COLS = "tile_cols"
ATTR_TILE_BUDGET = "tile_budget"
# The selection modes by their attribute code (the list index).
SELECTION_MODES = ("row", "tile", "two_level")
TILE_ATTRIBUTES = (
    Attribute(ATTR_SELECTION, "int", "0 row, 1 tile (the tile's top-C), 2 two_level (row top-B inside it)", 0),
    Attribute(ATTR_GRID_COLS, "int", "patch grid width of the non-CLS rows, 0 for a square grid", 0),
    Attribute(ATTR_TILE_ROWS, "int", "tile height on the patch grid", 8),
    Attribute(ATTR_TILE_COLS, "int", "tile width on the patch grid", 8),
    Attribute(ATTR_TILE_BUDGET, "int", "C, keys kept per tile, 1 <= C <= N (0: the budget)", 0),
)
# Version 2's attributes in their canonical order: version 1's, then the tile ones.
ATTRIBUTES_V2 = ATTRIBUTES + TILE_ATTRIBUTES
ATTRIBUTE_NAMES_V2 = tuple(a.name for a in ATTRIBUTES_V2)


@dataclass(frozen=True)
class Selection:
    """How the op selects keys (version 2's tile attributes); the default is version 1's rows.

    ``tile_budget`` 0 means the budget; ``grid_cols`` 0 means a square grid.
    """

    mode: str = "row"
    grid_cols: int = 0
    tile_rows: int = 8
    tile_cols: int = 8
    tile_budget: int = 0

    def __post_init__(self):
        if self.mode not in SELECTION_MODES:
            raise ValueError(f"selection must be one of {', '.join(SELECTION_MODES)}; got {self.mode!r}")
        for name in ("grid_cols", "tile_budget"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.tile_rows < 1 or self.tile_cols < 1:
            raise ValueError(f"the tile shape must be at least 1 x 1, got {self.tile_rows} x {self.tile_cols}")

    @property
    def is_row(self) -> bool:
        return self.mode == "row"

    @property
    def code(self) -> int:
        return SELECTION_MODES.index(self.mode)

    def attributes(self) -> dict:
        """The tile attributes of a version-2 node."""
        return {ATTR_SELECTION: self.code, ATTR_GRID_COLS: int(self.grid_cols), ATTR_TILE_ROWS: int(self.tile_rows),
                ATTR_TILE_COLS: int(self.tile_cols), ATTR_TILE_BUDGET: int(self.tile_budget)}

    @classmethod
    def from_attributes(cls, values: dict) -> "Selection":
        """From typed version-2 attributes (see typed_attributes_v2)."""
        code = int(values.get(ATTR_SELECTION, 0))
        if not 0 <= code < len(SELECTION_MODES):
            raise ValueError(f"{ATTR_SELECTION} must be 0, 1 or 2, got {code}")
        return cls(SELECTION_MODES[code], int(values.get(ATTR_GRID_COLS, 0)), int(values.get(ATTR_TILE_ROWS, 8)),
                   int(values.get(ATTR_TILE_COLS, 8)), int(values.get(ATTR_TILE_BUDGET, 0)))


def max_exact_tile_rows(rank: int) -> int:
    """The most rows a tile may have for its summed scores to stay exact in fp32 on the grids of
    ``sparsifiner.ops.grid`` (coef step 2^-10, basis codes <= 127) at rank R: 127 at R = 32."""
    return int((2 ** 24 - 1) // ((2 ** 10 + rank / 2) * 127))


def op_version_for(selection: Optional[Selection]) -> int:
    """The op version a node with this selection needs: 1 for rows, 2 for tiles."""
    return OP_VERSION if selection is None or selection.is_row else OP_VERSION_TILE


def typed_attributes_v2(values: dict) -> dict:
    """Like typed_attributes, for version 2's attributes (ATTRIBUTES_V2)."""
    unknown = sorted(set(values) - set(ATTRIBUTE_NAMES_V2))
    if unknown:
        raise ValueError(f"unknown {OP_NAME} v2 attributes {unknown}; the op has {list(ATTRIBUTE_NAMES_V2)}")
    base = typed_attributes({k: v for k, v in values.items() if k in ATTRIBUTE_NAMES})
    for attr in TILE_ATTRIBUTES:
        base[attr.name] = attr.convert(values[attr.name]) if attr.name in values else attr.default
    return base
