"""Shared helpers for the benchmark scripts in this folder.

Every benchmark is a script run from the repository root::

    python benchmarks/<name>.py [--quick] [--json results/<name>.json]

``--quick`` must finish in about a minute on a laptop-class CPU (small sizes, fewer repeats); the default
("full") mode runs the sizes quoted in the docs. ``--json PATH`` writes the figures plus machine information
so numbers from different machines are never compared blind.

Importing this module puts the repository root on ``sys.path`` so the scripts can ``import nrcc_scale``
without installing it. Helpers:

* :func:`parse_args` - the common command line (``--quick``, ``--json``), extensible per script;
* :func:`median_time` / :func:`timed` - median wall time over repeats (after warm-up runs), with an
  optional ``sync`` callback (e.g. ``torch.cuda.synchronize``) so asynchronous GPU work is counted;
* :func:`print_table` - a fixed-width table from a list of dicts;
* :func:`machine_info` / :func:`write_json` - provenance and output.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

T = TypeVar("T")

__all__ = [
    "REPO_ROOT",
    "machine_info",
    "median_time",
    "parse_args",
    "print_table",
    "timed",
    "train_and_embed",
    "write_json",
]


def parse_args(
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: Sequence[str] | None = None,
) -> argparse.Namespace:
    """Parse ``--quick`` and ``--json PATH`` plus whatever ``add_arguments(parser)`` adds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, finishes in about a minute")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the figures as JSON")
    if add_arguments is not None:
        add_arguments(parser)
    return parser.parse_args(argv)


def timed(
    fn: Callable[[], T], repeats: int = 5, warmup: int = 1, sync: Callable[[], Any] | None = None
) -> tuple[float, T]:
    """Median wall time (s) of ``fn()`` over ``repeats`` runs after ``warmup`` runs, and the last result.

    ``sync`` is called before starting and before stopping each clock (pass ``torch.cuda.synchronize`` for
    GPU work, whose kernels otherwise return before they finish).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    result: T
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        start = time.perf_counter()
        result = fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def median_time(
    fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, sync: Callable[[], Any] | None = None
) -> float:
    """Median wall time in seconds of ``fn()``; see :func:`timed`."""
    return timed(fn, repeats=repeats, warmup=warmup, sync=sync)[0]


def _cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else floatfmt.format(value)
    return str(value)


def print_table(
    rows: Iterable[dict[str, Any]],
    columns: Sequence[str] | None = None,
    title: str | None = None,
    floatfmt: str = "{:.4g}",
) -> None:
    """Print dict rows as a right-aligned fixed-width table (missing values print as ``-``)."""
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(col), floatfmt) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(col.rjust(w) for col, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    sys.stdout.flush()


def machine_info() -> dict[str, Any]:
    """Where the numbers came from: host, CPU, library versions and the GPU if torch sees one."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    for name in ("numpy", "scipy", "sklearn", "torch"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        info[name] = getattr(module, "__version__", "?")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as fh:
            models = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        if models:
            info["cpu_model"] = models[0]
    except OSError:
        pass
    return info


def write_json(path: Path | str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with ``machine`` info and a UTC timestamp added; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine_info(),
        **payload,
    }
    path.write_text(json.dumps(document, indent=2, default=_json_default) + "\n")
    print(f"\nwrote {path}")
    return path


def _json_default(value: Any) -> Any:
    """NumPy scalars/arrays and paths to plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def train_and_embed(job: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Train one configuration in this process (one thread, CPU) from ``job["overrides"]`` into
    ``job["root"]/job["name"]``, then embed its evaluation set with the trained target encoder.
    Returns (config, data bundle, embeddings) - what the sweep-style benchmarks score."""
    import torch

    torch.set_num_threads(1)
    from nrcc_scale.config_load import load_config
    from nrcc_scale.data.registry import build_data
    from nrcc_scale.engine.checkpoint import find_latest_checkpoint
    from nrcc_scale.engine.context import LocalContext
    from nrcc_scale.engine.loop import train_worker
    from nrcc_scale.evaluation.checkpoint_eval import load_trained
    from nrcc_scale.evaluation.embed import embed_source
    from nrcc_scale.train import loop_hooks

    cpu = torch.device("cpu")
    cfg = load_config(overrides=job["overrides"])
    cfg.name = job["name"]
    run_dir = Path(job["root"]) / job["name"]
    train_worker(cfg.to_dict(), LocalContext(run_dir, cpu, keep=1), loop_hooks())
    trained = load_trained(find_latest_checkpoint(run_dir), cpu)
    data = build_data(cfg.data, seed=cfg.train.seed)
    emb = embed_source(trained.method.embedding_model(), data.evaluate, trained.resolution, cpu)
    return cfg, data, emb
