"""Engine files and their JSON sidecars: writing them together, reading them back with checks.

``model.engine`` is written atomically with ``model.engine.json`` beside it: inputs and
outputs (names, shapes, dtypes), the optimization profile, backend and version, target,
plugin library and its sha256, the ONNX file and its sha256, build settings and time, and
the layer list of the build. ``open_engine`` checks, before anything needs a GPU, that
the file is a TensorRT engine (magic), that it is the one the sidecar describes (sha256:
a corrupt or replaced engine is refused), and that the installed backend and version
are the ones that built it (TensorRT engines load only in the version that built them).
"""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from sparsifiner import __version__
from sparsifiner.artifacts import atomic_write, sidecar_path, write_json
from sparsifiner.errors import SparsifinerError

SIDECAR_FORMAT = "sparsifiner-engine/1"
# The first four bytes of a serialized engine. "vtrt" is what TensorRT-RTX 1.7 writes (checked);
# "ftrt" is classic TensorRT's (from its serialisation format; not checked here).
ENGINE_MAGIC = {b"vtrt": "tensorrt_rtx", b"ftrt": "tensorrt"}
BACKEND_LABELS = {"tensorrt_rtx": "TensorRT-RTX", "tensorrt": "TensorRT"}


def write_engine(engine_path: Union[str, Path], engine: bytes, sidecar: dict) -> None:
    """Write the engine and its sidecar atomically; neither is left behind when one fails."""
    from sparsifiner.runtime.plugin_build import file_sha256

    engine_path = Path(engine_path)
    try:
        atomic_write(engine_path, lambda tmp: Path(tmp).write_bytes(engine))
    except OSError as exc:
        raise SparsifinerError(f"cannot write {engine_path}: {exc.strerror or exc}; nothing was written") from exc
    data = dict(sidecar, format=SIDECAR_FORMAT, sparsifiner_version=__version__,
                engine={"path": str(engine_path.resolve()), "bytes": len(engine), "sha256": file_sha256(engine_path)},
                written_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    try:
        write_json(sidecar_path(engine_path), data)
    except OSError as exc:
        engine_path.unlink(missing_ok=True)
        raise SparsifinerError(f"cannot write {sidecar_path(engine_path)}: {exc.strerror or exc}; "
                               "the engine was removed again") from exc


@dataclass(frozen=True)
class EngineFile:
    """A checked engine: its bytes and its sidecar."""

    path: Path
    data: bytes
    sidecar: dict

    @property
    def backend(self) -> str:
        return self.sidecar["backend"]["name"]


def read_sidecar(engine_path: Union[str, Path]) -> dict:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise SparsifinerError(f"{engine_path} has no sidecar {path.name}: it was not built by `sparsifiner build-engine` "
                               "(a foreign engine); build it with sparsifiner build-engine")
    try:
        sidecar = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparsifinerError(f"{path} is not valid JSON: rebuild the engine") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise SparsifinerError(f"{path} is not a sparsifiner engine sidecar ({SIDECAR_FORMAT}): rebuild the engine")
    return sidecar


def open_engine(engine_path: Union[str, Path], installed: Optional[tuple] = None) -> EngineFile:
    """Read and check an engine built by build-engine.

    installed: (backend name, version) of the TensorRT this process would load the engine
    with; None skips the version check (nothing installed to compare with).
    """
    import hashlib

    path = Path(engine_path)
    if not path.is_file():
        raise SparsifinerError(f"engine file not found: {path}")
    data = path.read_bytes()
    magic = ENGINE_MAGIC.get(data[:4])
    if magic is None:
        raise SparsifinerError(f"{path} is not a TensorRT engine (unknown header {data[:4]!r}): "
                               "pass a file written by sparsifiner build-engine")
    sidecar = read_sidecar(path)
    expected = (sidecar.get("engine") or {}).get("sha256")
    if hashlib.sha256(data).hexdigest() != expected:
        raise SparsifinerError(f"{path} does not match its sidecar (sha256 differs): the engine is corrupt or was "
                               "replaced; rebuild it with sparsifiner build-engine")
    built = sidecar.get("backend") or {}
    if magic != built.get("name"):
        said = str(built.get("name"))
        raise SparsifinerError(f"{path} is a {BACKEND_LABELS.get(magic, magic)} engine but its sidecar says "
                               f"{BACKEND_LABELS.get(said, said)}: rebuild it")
    if installed is not None:
        check_installed_backend(path, sidecar, installed)
    return EngineFile(path, data, sidecar)


def check_installed_backend(path: Path, sidecar: dict, installed: tuple) -> None:
    """Refuse an engine the installed (backend name, version) cannot load."""
    built = sidecar["backend"]
    name, version = installed
    if name != built["name"]:
        raise SparsifinerError(f"{path} was built with {BACKEND_LABELS[built['name']]} {built['version']}, but this "
                               f"environment has {BACKEND_LABELS.get(name, name)} {version}: install "
                               f"{BACKEND_LABELS[built['name']]} {built['version']} or rebuild the engine")
    if version != built["version"]:
        raise SparsifinerError(f"{path} was built with {BACKEND_LABELS[name]} {built['version']} and this is "
                               f"{version}: engines load only in the version that built them; rebuild it")


def format_sidecar(sidecar: dict) -> str:
    """The human summary build-engine prints."""
    backend = sidecar["backend"]
    io = ", ".join(f"{t['name']} {t['shape']} {t['dtype']}" for t in sidecar["inputs"] + sidecar["outputs"])
    lines = [f"wrote {sidecar['engine']['path']} ({sidecar['engine']['bytes'] / 1e6:.1f} MB, "
             f"{sidecar['build_seconds']:.1f} s) and its sidecar {Path(sidecar['engine']['path']).name}.json",
             f"  {BACKEND_LABELS[backend['name']]} {backend['version']}, target {sidecar['target']}; {io}"
             + (f"; explicit {sidecar['onnx']['qdq']} Q/DQ" if (sidecar.get("onnx") or {}).get("qdq") else "")]
    if sidecar.get("profile"):
        p = sidecar["profile"]
        lines.append(f"  batch profile min {p['min']} / opt {p['opt']} / max {p['max']}")
    layers = sidecar["layers"]
    if sidecar.get("plugin"):
        lines.append(f"  {len(layers['plugin'])} plugin layers ({sidecar['plugin']['name']} v{sidecar['plugin']['version']},"
                     f" {sidecar['plugin']['library']})")
    elif sidecar.get("custom_nodes"):
        lines.append(f"  {sidecar['custom_nodes']} TopKMaskedAttention nodes built from their local function (no plugin)")
    if layers.get("engine"):
        lines.append(f"  {len(layers['engine'])} engine layers (listed in the sidecar)")
    return "\n".join(lines)
