"""Loading a run config: the defaults, then each YAML file in order, then each ``key=value`` override, then
the checks (``nrcc_scale.config_checks``), so a mistake is one line before any work starts.

The entry point for the command lines (``nrcc_scale.cli``), checkpoints and sweeps. It sits above the
registries the checks consult (methods, backbones, data sets), which is why it is not ``nrcc_scale.config``
(the dataclasses, which those registries import).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nrcc_scale.config import Config, ConfigError
from nrcc_scale.config_checks import validate_config
from nrcc_scale.config_parse import apply_mapping, nest_key, parse_override, read_yaml

__all__ = ["apply_overrides", "config_from_dict", "load_config"]


def load_config(
    files: list[str | Path] | None = None, overrides: list[str] | None = None, validate: bool = True
) -> Config:
    """Defaults, then each YAML file in order, then each ``key=value`` override; then validate."""
    cfg = Config()
    for path in files or []:
        data = read_yaml(path)
        try:
            apply_mapping(cfg, data, "")
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    return apply_overrides(cfg, list(overrides or []), validate)


def apply_overrides(cfg: Config, overrides: list[str], validate: bool = True) -> Config:
    """Apply ``key=value`` overrides to an existing config (e.g. one read from a checkpoint)."""
    for text in overrides:
        key, value = parse_override(text)
        apply_mapping(cfg, nest_key(key, value), "")
    if validate:
        validate_config(cfg)
    return cfg


def config_from_dict(data: dict[str, Any], validate: bool = True) -> Config:
    cfg = Config()
    apply_mapping(cfg, data, "")
    if validate:
        validate_config(cfg)
    return cfg
