"""The results of ``python -m nrcc_scale.tune``: one row per trial, the best trial, the table, the CSV and the
best trial's training config."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from nrcc_scale.config import Config
from nrcc_scale.config import save_config as save_train_config
from nrcc_scale.tune_schema import RUNS_DIR, Sweep, trial_config
from nrcc_scale.utils.files import atomic_write_text

#: Columns of the results table after the trial, its status and the searched keys (when present): the
#: label-free scores beside the labelled ones (columns no trial reported, e.g. NMI without labels, are dropped).
TABLE_METRICS = ("nmi", "acc", "ari", "num_clusters", "knn_acc", "linear_acc", "rankme", "stability", "silhouette",
                 "singleton_fraction", "monitor_nmi", "loss", "epoch")


def result_rows(result_grid: Any, sweep: Sweep) -> list[dict[str, Any]]:
    """One row per trial: id, status, searched values, then the metrics of its last report."""
    keys = list(sweep.search_space)
    epochs = sweep.max_epochs()
    rows = []
    for result in result_grid:
        metrics = dict(result.metrics or {})
        trial = metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_")
        if result.error is not None:
            status = "error"
        elif metrics.get("evaluated"):
            status = "done"
        elif int(metrics.get("epoch", 0)) < epochs:
            status = "stopped early"
        else:
            status = "done" if not sweep.settings.evaluate else "not evaluated"
        row: dict[str, Any] = {"trial": trial, "status": status}
        row.update({k: (result.config or {}).get(k) for k in keys})
        for name in dict.fromkeys([sweep.settings.metric, *TABLE_METRICS]):
            row[name] = metrics.get(name)
        row["run_dir"] = str(sweep.path / RUNS_DIR / f"trial_{trial}")
        row["error"] = str(result.error).splitlines()[0][:200] if result.error is not None else ""
        rows.append(row)
    return sorted(rows, key=lambda r: str(r["trial"]))


def best_row(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    scored = [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r[metric])


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = [c for c in rows[0] if c not in ("run_dir", "error") and any(r.get(c) is not None for r in rows)]

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


def write_results(rows: list[dict[str, Any]], path: Path) -> None:
    from io import StringIO

    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_best_config(sweep: Sweep, row: dict[str, Any], path: Path) -> Config:
    """The best trial's full training config, as a file ``python -m nrcc_scale.train --config`` takes: the
    base config's storage and an empty run name (a fresh, timestamped run, not a resume of the trial)."""
    cfg = trial_config(sweep.base.to_dict(), {k: row[k] for k in sweep.search_space})
    cfg.name = ""
    save_train_config(cfg, path)
    return cfg
