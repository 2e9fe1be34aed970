"""Settings of the export stage: where the model comes from and what graph to write.

Two frozen dataclasses, built only by the CLI (or by tests and scripts):

* ``ModelSource``: a checkpoint, or a timm name made into a Sparsifiner (random
  weights, or timm's under ``pretrained``), seeded so the same random model can be
  rebuilt later (``validate`` does, from the ONNX file's metadata).
* ``ExportSettings``: the source plus the attention form, opset, dtype and batch.

Untrained-model policy: a checkpoint must carry a pruned basis (phase 2 done, or
``sparsifiner.prune_basis`` run and saved) to export sparse attention; a model made
from a timm name has a random predictor whose basis is pruned on the fly, which is
for deployment testing only and is marked ``trained = false`` in the metadata.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Optional, Union

from sparsifiner.errors import SparsifinerError
from sparsifiner.settings import SparsifinerSettings

ATTENTION_FORMS = ("custom", "decomposed", "dense")
DTYPES = ("fp32", "fp16")
MIN_OPSET = 17
DEFAULT_OPSET = 18
DEFAULT_BATCH_DIM = "batch"
# `--model demo` is the bundled digits ViT (sparsifiner.model.zoo), N = 65.
DEMO_ALIAS = "demo"
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
class ModelSource:
    """Where the PyTorch model comes from; exactly one of checkpoint and model_name."""

    checkpoint: Optional[str] = None
    model_name: Optional[str] = None
    pretrained: bool = False
    seed: int = 0
    img_size: Optional[int] = None
    settings: Optional[SparsifinerSettings] = None
    # Extra timm kwargs for model_name (e.g. {"depth": 2} in tests); not for checkpoints.
    timm_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if (self.checkpoint is None) == (self.model_name is None):
            raise SparsifinerError("give exactly one of --checkpoint PATH or --model NAME")
        if self.checkpoint is not None and (self.settings is not None or self.pretrained or self.timm_kwargs):
            raise SparsifinerError(
                "a checkpoint carries its own settings and weights: drop the settings flags and --pretrained"
            )

    @property
    def kind(self) -> str:
        return "checkpoint" if self.checkpoint is not None else "model"

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["settings"] = None if self.settings is None else self.settings.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSource":
        data = dict(data)
        if data.get("settings") is not None:
            data["settings"] = SparsifinerSettings.from_dict(data["settings"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


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
