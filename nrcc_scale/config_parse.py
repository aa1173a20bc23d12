"""Reading configs: YAML files and ``key=value`` overrides into the typed dataclasses of ``nrcc_scale.config``.

Only keys and types are checked here (an unknown key, a string where a number is expected); ranges, choices
and registry names are ``nrcc_scale.config_checks``'s, and ``nrcc_scale.config_load`` runs both in order.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

from nrcc_scale.config import ConfigError

__all__ = ["apply_mapping", "nest_key", "parse_override", "read_yaml"]


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


#: YAML 1.1 (PyYAML) reads ``1e-3`` and ``5e-4`` as strings (it wants ``1.0e-3``); numeric keys accept them.
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
#: String keys that also take a YAML boolean (``amp: off`` is read as False).
_BOOLEAN_ALIASES: dict[str, dict[bool, str]] = {"train.amp": {False: "off", True: "auto"}}


def _number(value: Any) -> Any:
    """A string spelling a number (``1e-3``, ``5E4``, ``-2.5``) as a float; anything else unchanged."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value.strip())
    return value


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotated type ``tp``; allow the conversions YAML makes natural
    (an int where a float is expected). Raise ConfigError naming the key otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{key} = {value!r}: expected {_type_name(tp)}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {value!r}: expected a list of {_type_name(item_tp)}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} = {value!r}: expected true or false")
    if tp in (int, float):
        value = _number(value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} = {value!r}: expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} = {value!r}: expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. name=123
        raise ConfigError(f"{key} = {value!r}: expected a string")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def apply_mapping(obj: Any, mapping: dict[str, Any], prefix: str = "") -> None:
    """Write a (possibly nested) mapping into a dataclass instance, checking keys and types."""
    if not isinstance(mapping, dict):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: expected a mapping of keys, got {mapping!r}")
    hints = _field_types(type(obj))
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if key not in hints:
            allowed = ", ".join(sorted(hints))
            raise ConfigError(f"unknown key '{path}': allowed here are {allowed}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            apply_mapping(current, value, f"{path}.")
        else:
            if isinstance(value, bool) and path in _BOOLEAN_ALIASES:
                value = _BOOLEAN_ALIASES[path][value]
            setattr(obj, key, _coerce(path, value, hints[key]))


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b.c=value`` -> (``a.b.c``, value parsed as YAML so numbers, booleans and null work)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. method.nrcc.weight=0.5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}': the key before '=' is empty")
    import yaml  # here, not at the top: `benchmarks/gpu_check.py` builds configs without PyYAML installed

    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def nest_key(key: str, value: Any) -> dict[str, Any]:
    """``a.b.c``, value -> ``{"a": {"b": {"c": value}}}``, the mapping :func:`apply_mapping` writes."""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of keys")
    return data
