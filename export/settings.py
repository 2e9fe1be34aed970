"""Settings of the export stage: ``ExportSettings``, a frozen dataclass built only by the
CLI (or by tests and scripts): the model source (``sparsifiner.model.source.ModelSource``,
whose docstring states the untrained-model policy) plus the attention form, opset,
dtype and batch. Exports of untrained models are marked ``trained = false`` in the
file's metadata.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from sparsifiner.errors import SparsifinerError
from sparsifiner.model.source import ModelSource

ATTENTION_FORMS = ("custom", "decomposed", "dense")
DTYPES = ("fp32", "fp16")
MIN_OPSET = 17
DEFAULT_OPSET = 18
DEFAULT_BATCH_DIM = "batch"
_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_batch(value: Union[int, str]) -> Union[int, str]:
    """An int (fixed batch) or the name of a dynamic batch dimension ("dynamic" -> "batch")."""
    if isinstance(value, int) and not isinstance(value, bool):
        batch: Union[int, str] = value
    else:
        text = str(value).strip()
        if text.isdigit():
            batch = int(text)
        elif text == "dynamic":
            return DEFAULT_BATCH_DIM
        elif _DIM_NAME.match(text):
            return text
        else:
            raise SparsifinerError(f"--batch must be a positive integer or a dimension name like 'dynamic'; got {value!r}")
    if batch < 1:
        raise SparsifinerError(f"--batch must be >= 1, got {batch}")
    return batch


@dataclass(frozen=True)
class ExportSettings:
    """What ``sparsifiner export`` writes.

    attention: "custom" (one TopKMaskedAttention node per block, plus a local ONNX
        function of the same name whose body is the standard-op decomposition),
        "decomposed" (that body inlined: standard ops only) or "dense" (the teacher:
        the backbone with timm's original attention).
    opset: ONNX opset of the default domain, >= 17.
    dtype: "fp32" or "fp16" (weights, inputs and outputs; scores and softmax of the
        sparse attention are fp32 inside either way, like the reference).
    batch: a fixed batch size, or the name of a dynamic batch dimension.
    """

    source: ModelSource
    attention: str = "custom"
    opset: int = DEFAULT_OPSET
    dtype: str = "fp32"
    batch: Union[int, str] = DEFAULT_BATCH_DIM

    def __post_init__(self):
        if self.attention not in ATTENTION_FORMS:
            raise SparsifinerError(f"--attention must be one of {', '.join(ATTENTION_FORMS)}; got {self.attention!r}")
        if self.dtype not in DTYPES:
            raise SparsifinerError(f"--dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        import onnx

        newest = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= self.opset <= newest:
            raise SparsifinerError(
                f"unsupported opset {self.opset}: use --opset between {MIN_OPSET} and {newest} (default {DEFAULT_OPSET})"
            )
        object.__setattr__(self, "batch", parse_batch(self.batch))

    @property
    def dynamic_batch(self) -> bool:
        return isinstance(self.batch, str)

    def to_dict(self) -> dict:
        return {"source": self.source.to_dict(), "attention": self.attention, "opset": self.opset,
                "dtype": self.dtype, "batch": self.batch}
