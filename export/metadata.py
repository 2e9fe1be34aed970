"""The metadata_props an exported ONNX file carries, and reading them back.

Every value is a string; structured values are JSON. Preprocessing keys follow timm's
data config (``preprocess.mean`` etc.) so a deployment can rebuild the transform
without timm. ``sparsifiner.source`` records how to rebuild the PyTorch model (a
checkpoint path, or a timm name with its seed), which ``validate`` uses by default.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from sparsifiner import __version__, op_spec
from sparsifiner.errors import SparsifinerError

PREFIX = "sparsifiner."
PREPROCESS_PREFIX = "preprocess."
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def build_metadata(*, attention: str, dtype: str, opset: int, batch, budget: int, settings: dict, arch: dict,
                   source: dict, trained: bool, data_config: dict) -> dict[str, str]:
    """The key -> string map written into ModelProto.metadata_props."""
    meta = {
        "version": __version__,
        "attention": attention,
        "dtype": dtype,
        "opset": opset,
        "batch": batch,
        "budget": budget,
        "keep_rate": settings["keep_rate"],
        "settings": settings,
        "arch": arch,
        "source": source,
        "trained": trained,
        "op": f"{op_spec.OP_DOMAIN}::{op_spec.OP_NAME}@{op_spec.OP_VERSION}" if attention == "custom" else "",
    }
    props = {PREFIX + k: _encode(v) for k, v in meta.items()}
    props.update({PREPROCESS_PREFIX + k: _encode(v) for k, v in data_config.items()})
    return props


def _encode(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _decode(text: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


def metadata_of(model) -> dict:
    """{"sparsifiner": {...}, "preprocess": {...}} decoded from a ModelProto."""
    out: dict = {"sparsifiner": {}, "preprocess": {}}
    for prop in model.metadata_props:
        for prefix, group in ((PREFIX, "sparsifiner"), (PREPROCESS_PREFIX, "preprocess")):
            if prop.key.startswith(prefix):
                out[group][prop.key[len(prefix):]] = _decode(prop.value)
    return out


def read_metadata(path: Union[str, Path]) -> dict:
    """The decoded metadata of an ONNX file (weights are not loaded)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise SparsifinerError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise SparsifinerError(f"{path} is not a readable ONNX file (corrupt or truncated): export it again") from exc
    return metadata_of(model)
