"""``report.html``: one self-contained page per run — the printed table, the label-free and labelled scores,
the plots and the cluster galleries. Every image is inlined as a base64 ``data:`` URI, there are no scripts
and no external references, so the file opens in any browser offline and can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from nrcc_scale.utils.files import atomic_write_text

REPORT_FILE = "report.html"

#: (file, heading) in page order; missing files are left out
SECTIONS = (("clusters.png", "The largest clusters (images nearest each mode)"),
            ("cluster_sizes.png", "Cluster sizes"),
            ("umap_scatter.png", "UMAP embedding"),
            ("confusion.png", "True class vs found cluster"),
            ("curves.png", "Training curves"))
SCORE_KEYS = ("nmi", "acc", "ari", "ami", "knn_acc", "linear_acc", "num_clusters", "rankme", "stability",
              "silhouette", "trustworthiness", "cluster_size_cv", "largest_cluster_fraction", "singleton_fraction",
              "global_std", "bandwidth", "num_samples", "embedding_dim")

STYLE = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}
pre{background:#f4f4f4;padding:12px;border:1px solid #ccc;font-size:13px;overflow-x:auto}
table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 10px;text-align:right}
th{background:#e8e8e8}img{max-width:100%;border:1px solid #ddd;margin:4px 0}
.small img{max-width:480px;margin-right:8px}"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _img(path: Path, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{data_uri(path)}">'


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def render(run_dir: Path, metrics: dict[str, Any], table: str, title: str = "") -> str:
    """The page as a string (no file written)."""
    title = title or f"nrcc-scale run {run_dir.name}"
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    if not metrics.get("labelled", True):
        parts.append("<p><b>No labels:</b> only label-free scores are shown.</p>")
    parts.append(f"<h2>Results</h2><pre id='results-table'>{html.escape(table)}</pre>")
    rows = [(k, metrics[k]) for k in SCORE_KEYS if metrics.get(k) is not None]
    parts.append("<h2>Scores</h2><table id='scores'><tr><th>score</th><th>value</th></tr>"
                 + "".join(f"<tr><td style='text-align:left'>{html.escape(k)}</td><td>{_value(v)}</td></tr>"
                           for k, v in rows) + "</table>")
    for name, heading in SECTIONS:
        if (run_dir / name).is_file():
            parts.append(f"<h2>{html.escape(heading)}</h2>{_img(run_dir / name, name)}")
    gallery = sorted((run_dir / "cluster_gallery").glob("cluster_*.png")) if (run_dir / "cluster_gallery").is_dir() \
        else []
    if gallery:
        parts.append("<h2>One image per cluster</h2><div class='small'>"
                     + "".join(_img(p, p.stem) for p in gallery) + "</div>")
    config = run_dir / "config.yaml"
    if config.is_file():
        parts.append(f"<h2>Configuration</h2><pre>{html.escape(config.read_text())}</pre>")
    shown = {k: v for k, v in metrics.items() if k not in ("files",)}
    parts.append("<h2>metrics.json</h2><pre>" + html.escape(json.dumps(shown, indent=1, default=str)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html_report(run_dir: Path, metrics: dict[str, Any], table: str, title: str = "") -> Path:
    path = run_dir / REPORT_FILE
    atomic_write_text(path, render(run_dir, metrics, table, title))
    return path
