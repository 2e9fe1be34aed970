"""Recipes: a YAML file of training settings, plus command-line overrides, into TrainSettings.

A recipe mirrors ``TrainSettings.to_dict()``: top-level run settings, a
``sparsifiner:`` mapping (SparsifinerSettings) and one mapping per phase (``teacher:``,
``phase1:``, ``phase2:``). Overrides use dotted keys (``phase1.lr``,
``sparsifiner.keep_rate``) and win over the file. The bundled recipes (``demo``,
``deit_small``) live in the repository's top-level ``recipes/`` folder, shipped inside
the package as ``sparsifiner/train/recipes`` (a link to it); a recipe argument is a
bundled name or a path to a YAML file. A recipe may start from another with
``extends: NAME`` (a bundled name, or a path relative to the recipe's folder): its
keys win over the base's, section by section.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from sparsifiner.errors import SparsifinerError
from sparsifiner.settings import SparsifinerSettings
from sparsifiner.train.settings import PHASES, SECTIONS, PhaseSettings, TrainSettings

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


def recipe_names() -> list[str]:
    """Names of the bundled recipes."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")) if RECIPE_DIR.is_dir() else []


def resolve_recipe(name_or_path: Union[str, Path]) -> Path:
    """The YAML file of a bundled recipe name, or the given path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SparsifinerError(f"recipe file {path} not found")
        return path
    bundled = RECIPE_DIR / f"{name_or_path}.yaml"
    if not bundled.is_file():
        raise SparsifinerError(f"unknown recipe {name_or_path!r}: use one of {', '.join(recipe_names()) or '(none)'} "
                               "or a path to a .yaml file")
    return bundled


def load_recipe(name_or_path: Union[str, Path], _seen: tuple = ()) -> dict:
    """The settings mapping of a recipe file, its ``extends:`` chain merged in (one-line errors)."""
    path = resolve_recipe(name_or_path)
    data = _read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise SparsifinerError(f"recipe {path}: extends takes one recipe name or path, got {base!r}")
    here = path.resolve()
    if here in _seen:
        raise SparsifinerError(f"recipe {path} extends itself through {' -> '.join(p.name for p in _seen)}")
    local = path.parent / base
    parent = load_recipe(local if local.suffix in (".yaml", ".yml") and local.is_file() else base, _seen + (here,))
    merged = dict(parent)
    for key, value in data.items():  # mappings merge key by key, everything else replaces
        both = isinstance(value, Mapping) and isinstance(parent.get(key), Mapping)
        merged[key] = {**parent[key], **value} if both else value
    return merged


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SparsifinerError(f"recipe {path} is not valid YAML{where}: fix the file") from None
    if not isinstance(data, dict):
        raise SparsifinerError(f"recipe {path} must be a mapping of settings")
    return data


def parse_assignment(text: str) -> tuple[str, Any]:
    """'phase1.lr=1e-3' -> ('phase1.lr', 0.001): the value is read as YAML (numbers, null, true)."""
    import yaml

    if "=" not in text:
        raise SparsifinerError(f"--set takes KEY=VALUE (e.g. phase1.lr=1e-3), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(recipe: Mapping, overrides: Mapping[str, Any]) -> dict:
    """A copy of ``recipe`` with dotted-key overrides applied (None values are skipped)."""
    merged = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in recipe.items()}
    for key, value in overrides.items():
        if value is None:
            continue
        parts = key.split(".")
        if len(parts) > 2:
            raise SparsifinerError(f"setting key {key!r} is nested too deep: use SECTION.NAME")
        if len(parts) == 2:
            section = merged.get(parts[0]) or {}
            if not isinstance(section, dict):
                raise SparsifinerError(f"setting {parts[0]!r} is not a section: cannot set {key!r}")
            section = dict(section)
            section[parts[1]] = value
            merged[parts[0]] = section
        else:
            merged[key] = value
    return merged


def build_train_settings(recipe: Optional[Mapping] = None, overrides: Optional[Mapping[str, Any]] = None) -> TrainSettings:
    """TrainSettings from a recipe mapping and dotted overrides, with YAML scalars coerced."""
    data = apply_overrides(recipe or {}, overrides or {})
    data = _coerce(TrainSettings, data, "")
    for name in PHASES:
        if isinstance(data.get(name), dict):
            data[name] = _coerce(PhaseSettings, data[name], f"{name}.")
    if isinstance(data.get("sparsifiner"), dict):
        data["sparsifiner"] = _coerce(SparsifinerSettings, data["sparsifiner"], "sparsifiner.")
    for name, section in SECTIONS.items():
        if isinstance(data.get(name), dict):
            data[name] = _coerce(section, data[name], f"{name}.")
    return TrainSettings.from_dict(data)


def _coerce(cls, data: dict, prefix: str) -> dict:
    """Turn YAML's strings such as '3e-4' (YAML 1.1 reads them as text) into the field's type."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f in dataclasses.fields(cls):
        if f.name not in out or out[f.name] is None:
            continue
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        target = args[0] if typing.get_origin(hint) is Union and len(args) == 1 else hint
        value = out[f.name]
        try:
            if target is float and isinstance(value, (str, int)) and not isinstance(value, bool):
                out[f.name] = float(value)
            elif target is int and isinstance(value, str):
                out[f.name] = int(value)
            elif target is int and isinstance(value, float) and value.is_integer():
                out[f.name] = int(value)
            elif target is bool and isinstance(value, str):
                if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                    raise ValueError(value)
                out[f.name] = value.lower() in ("true", "yes", "1")
            elif target is str and isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f.name] = str(value)
        except ValueError:
            raise SparsifinerError(f"setting {prefix}{f.name} must be a {target.__name__}, got {value!r}") from None
    return out
