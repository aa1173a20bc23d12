"""Finding a data set under ``data.root``: the root itself, a named folder below it, or the root as that folder.

Every reader's "not found" message names the path it expected and what to point ``data.root`` at.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from nrcc_scale.data.base import DataError

if TYPE_CHECKING:  # annotations only: the data set table (catalog) must not import the config at run time
    from nrcc_scale.config import DataConfig


def data_root(cfg: DataConfig, what: str) -> Path:
    if not cfg.root:
        raise DataError(f"data.root is empty: data.dataset = '{cfg.dataset}' needs {what}")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise DataError(f"{cfg.dataset}: data.root {root} does not exist; point data.root at {what}")
    return root


def find_dir(root: Path, names: Iterable[str]) -> Path | None:
    for n in names:
        candidate = root / n
        if candidate.is_dir():
            return candidate
    return None


def locate(root: Path, folder: str, marker: str) -> Path:
    """``root/folder`` if it exists, else ``root`` itself when it holds ``marker``."""
    if (root / folder).is_dir():
        return root / folder
    if (root / marker).exists():
        return root
    return root / folder  # missing: the caller's message names the expected path
