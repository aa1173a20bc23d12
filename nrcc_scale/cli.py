"""Shared command-line handling: ``--config FILE`` (repeatable) plus ``key=value`` overrides, and one-line
errors instead of stack traces for mistakes a user can fix."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from nrcc_scale.config import Config, ConfigError
from nrcc_scale.config_load import load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML config; repeatable, later files override earlier ones")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override any config key, e.g. method.nrcc.weight=0.5 train.epochs=10")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; report a ConfigError (bad key, value or type) or a DataError (missing, unreadable or
    corrupt data) in one line with exit status 2."""
    from nrcc_scale.data.base import DataError

    try:
        return main(argv)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"data error: {err}", file=sys.stderr)
        return 2
