"""Presets: sparse YAML files merged over the typed defaults of the families' settings.

A preset holds only what differs from the defaults; ``base: NAME`` inherits another preset first.
Every file is checked against the dataclass schema before merging, so an error names the file that
holds the bad key, the key's full path, and the allowed keys or values. Nothing is read at import.
The schema (``backends.runtime.settings.preset_schema``) comes from the family specs the caller
runs, so this module names no family.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from backends.runtime.errors import StudioError, UnknownNameError
from backends.runtime.loading import Source
from backends.runtime.settings import PresetBase, allowed_values

logger = logging.getLogger(__name__)

PRESETS_DIR = Path(__file__).resolve().parents[2] / "presets"
SHIPPED = ("lite", "bf16", "full", "cpu", "tiny")
#: ``auto`` picks the first of these whose ``min_vram_gb`` the card meets; full (float32) is never
#: picked: on a GPU it costs twice the memory of bf16 for no visible gain.
AUTO_ORDER = ("bf16", "lite")


class PresetError(StudioError):
    """A preset file is missing, unreadable or invalid; the message names file and key."""


@dataclass(frozen=True)
class Preset:
    """A loaded preset: its name, the merged settings, and the files it came from (base first)."""

    name: str
    settings: PresetBase
    files: tuple[Path, ...]


def available(presets_dir: Path = PRESETS_DIR) -> list[str]:
    """Shipped preset names, then the user's own from ``presets/user/``."""
    user = sorted(p.stem for p in (presets_dir / "user").glob("*.yaml"))
    return [*SHIPPED, *[name for name in user if name not in SHIPPED]]


def pick_auto(vram_total_bytes: int | None, schema: type[PresetBase], presets_dir: Path = PRESETS_DIR) -> str:
    """The preset ``--preset auto`` means for a card with this much memory (None: no CUDA)."""
    if vram_total_bytes is None:
        return "cpu"
    for name in AUTO_ORDER:
        if vram_total_bytes >= load(name, schema, presets_dir).settings.min_vram_gb * 1e9:
            return name
    return AUTO_ORDER[-1]


def _find(name: str, presets_dir: Path) -> Path:
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate.resolve()
    for folder in (presets_dir / "user", presets_dir):
        path = folder / f"{name}.yaml"
        if name in SHIPPED and folder.name == "user":
            continue  # shipped names always mean the shipped files
        if path.is_file():
            return path
    raise UnknownNameError(f"Unknown preset {name!r}; known: {', '.join(available(presets_dir))} "
                           "(or a path to a .yaml file)")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise PresetError(f"{path}: cannot read preset: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PresetError(f"{path}: a preset must be a mapping of keys, got {type(data).__name__}")
    return data


def _check(path: Path, data: dict[str, Any], schema: type, prefix: str = "") -> None:
    """Raise ``PresetError`` for the first unknown key, wrong type or disallowed value."""
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in data.items():
        where = f"{path}: key '{prefix}{key}'"
        if key not in fields:
            raise PresetError(f"{where} is not a preset key; allowed here: {', '.join(sorted(fields))}")
        _check_value(path, where, f"{prefix}{key}.", fields[key], value, hints[key])


def _check_value(path: Path, where: str, prefix: str, schema_field: dataclasses.Field[Any], value: Any,
                 hint: Any) -> None:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return
        hint = next(h for h in options if h is not type(None))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise PresetError(f"{where} must be a mapping with keys "
                              f"{', '.join(f.name for f in dataclasses.fields(hint))}; got {value!r}")
        _check(path, value, hint, prefix)
        return
    if typing.get_origin(hint) in (list, tuple):
        # A list of scalars (a family's ``offer``); choices, when the field has them, bind each item.
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list):
            raise PresetError(f"{where} must be a list of {item.__name__}, got {value!r} ({type(value).__name__})")
        for index, entry in enumerate(value):
            at = f"{where[:-1]}[{index}]'" if where.endswith("'") else f"{where}[{index}]"
            _check_value(path, at, prefix, schema_field, entry, item)
        if len(set(value)) != len(value):
            raise PresetError(f"{where} names an entry twice: {value!r}")
        return
    expected = {str: (str,), int: (int,), float: (int, float), bool: (bool,)}[hint]
    if isinstance(value, bool) and hint is not bool or not isinstance(value, expected):
        raise PresetError(f"{where} must be of type {hint.__name__}, got {value!r} ({type(value).__name__})")
    allowed = allowed_values(schema_field)
    if allowed is not None and value not in allowed:
        raise PresetError(f"{where} must be one of {', '.join(allowed)}; got {value!r}")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build(schema: type, data: dict[str, Any], default: Any) -> Any:
    """Overlay ``data`` on the dataclass instance ``default``, recursing into nested dataclasses."""
    changes: dict[str, Any] = {}
    for key, value in data.items():
        current = getattr(default, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = _build(type(current), value, current)
        elif isinstance(current, float) and isinstance(value, int):
            changes[key] = float(value)
        elif isinstance(current, tuple) and isinstance(value, list):
            changes[key] = tuple(value)
        else:
            changes[key] = value
    return dataclasses.replace(default, **changes)


def _layers(name: str, schema: type[PresetBase], presets_dir: Path,
            chain: tuple[str, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    path = _find(name, presets_dir)
    if str(path) in chain:
        raise PresetError(f"{path}: key 'base' makes a cycle: {' -> '.join([*chain, str(path)])}")
    data = _read(path)
    base = data.pop("base", None)
    _check(path, data, schema)
    if base is None:
        return [(path, data)]
    if not isinstance(base, str):
        raise PresetError(f"{path}: key 'base' must be a preset name, got {base!r}")
    try:
        parents = _layers(base, schema, presets_dir, (*chain, str(path)))
    except UnknownNameError as error:
        raise PresetError(f"{path}: key 'base' names a missing preset: {error}") from error
    return [*parents, (path, data)]


def load(name: str, schema: type[PresetBase], presets_dir: Path = PRESETS_DIR) -> Preset:
    """Load, validate and merge a preset by name (shipped or user) or by path.

    Args:
        name: a shipped or user preset name, or a path to a ``.yaml`` file.
        schema: the ``PresetSettings`` dataclass of the families the app runs
            (``preset_schema(specs)``); ``backends.families.load_preset`` passes the app's.
        presets_dir: the folder of shipped presets (its ``user/`` holds the user's own).
    """
    layers = _layers(name, schema, presets_dir)
    merged: dict[str, Any] = {}
    for _, data in layers:
        merged = _merge(merged, data)
    settings = _build(schema, merged, schema())
    logger.info("preset %s from %s", name, ", ".join(str(p) for p, _ in layers))
    return Preset(Path(name).stem if name.endswith((".yaml", ".yml")) else name, settings,
                  tuple(p for p, _ in layers))


__all__ = ["Preset", "PresetError", "Source", "available", "load", "pick_auto"]
