"""Artifacts on disk: atomic writes, the JSON written beside each artifact, ONNX metadata keys.

Every artifact (checkpoint, ONNX file, engine, figures) is written through
``atomic_write``: a temporary file in the same folder, then ``os.replace``, so a failure
leaves nothing half-written. Its settings go beside it as JSON (``model.onnx`` ->
``model.onnx.json``; ``sidecar_path``).

Exported ONNX files carry ``metadata_props``: every value is a string, structured
values are JSON. Preprocessing keys follow timm's data config (``preprocess.mean``
etc.) so a deployment can rebuild the transform without timm. ``sparsifiner.source``
records how to rebuild the PyTorch model (a checkpoint path, or a timm name with its
seed), which validation uses by default.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

from sparsifiner import __version__, op_spec
from sparsifiner.errors import SparsifinerError

# Tensor names of every exported graph (and so of every engine built from one).
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then move tmp_path onto path; no partial file is left."""
    path = Path(path)
    if not path.parent.exists():
        raise SparsifinerError(f"output folder {path.parent} does not exist: create it first")
    if not os.access(path.parent, os.W_OK):
        raise SparsifinerError(f"cannot write to {path.parent}: choose a writable output folder")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sidecar_path(path: Union[str, Path]) -> Path:
    """Where an artifact's JSON goes: ``model.onnx`` -> ``model.onnx.json`` (a checkpoint's
    ``model.json`` is its description, so the sidecar keeps the full name)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_json(path: Union[str, Path], data) -> Path:
    """Write ``data`` as indented JSON, atomically; returns the path."""
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str) + "\n"))
    return path


PREFIX = "sparsifiner."
PREPROCESS_PREFIX = "preprocess."


def build_metadata(*, attention: str, dtype: str, opset: int, batch, budget: int, settings: dict, arch: dict,
                   source: dict, trained: bool, data_config: dict, op_inputs: Optional[dict] = None,
                   op_version: int = op_spec.OP_VERSION) -> dict[str, str]:
    """The key -> string map written into ModelProto.metadata_props.

    op_inputs: {"coef": [...], "basis": [...]}, the tensor names each block's attention op
    reads (sparse forms), so validation can read a runtime's coefficients. op_version: 2
    for tile-shared selection.
    """
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
        "op": f"{op_spec.OP_DOMAIN}::{op_spec.OP_NAME}@{op_version}" if attention == "custom" else "",
    }
    if op_inputs:
        meta["op_inputs"] = op_inputs
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
