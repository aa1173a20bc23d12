"""What a person looks at: the metrics table, the UMAP scatter (true class | found cluster), the confusion
matrix, and the training curves (the paper's Figs. 1 and 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nrcc_scale.evaluation.pipeline import EvaluationResult

MAX_SCATTER_POINTS = 50_000
MAX_CONFUSION_CLASSES = 100


def format_table(result: EvaluationResult, extra_rows: dict[str, float] | None = None) -> str:
    rows = [result.main] + list(result.baselines.values())
    width = max(len(r.name) for r in rows) + 2
    head = f"{'':<{width}}{'NMI':>8}{'ACC':>8}{'ARI':>8}{'AMI':>8}{'clusters':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        s = r.scores
        cells = "".join(f"{s[k]:>8.4f}" if k in s else f"{'-':>8}" for k in ("nmi", "acc", "ari", "ami"))
        lines.append(f"{r.name:<{width}}{cells}{s['num_clusters']:>10d}")
    classes = result.main.scores.get("num_classes", "none (unlabelled)")
    lines.append(f"(true classes: {classes}; GridShift bandwidth "
                 f"{result.main.bandwidth:.4g}; global std {result.extra['global_std']:.4f}, "
                 f"1/sqrt(d) = {1 / np.sqrt(result.extra['embedding_dim']):.4f})")
    if "rankme" in result.extra:
        from nrcc_scale.evaluation.label_free import format_rows

        lines.extend(format_rows(result.extra))
    if not result.extra.get("labelled", True):
        lines.append("no labels: scores against classes, k-means with the true k and the probes are skipped")
    for key, value in (extra_rows or {}).items():
        lines.append(f"{key}: {value:.4f}")
    return "\n".join(lines)


def _subsample_rows(n: int, limit: int, seed: int = 0) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _colours(ids: np.ndarray, count: int):
    """Colours for integer ids 0..count-1, the same id always the same colour in every panel."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if count <= 10 else "tab20" if count <= 20 else "gist_ncar"]
    return cmap(ids % cmap.N if count <= 20 else ids / max(count - 1, 1))


def matched_cluster_ids(true_labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Rename found clusters to the class they are matched to (Hungarian, as ACC), so a correct cluster
    gets its class's colour; unmatched clusters get ids after the last class."""
    from scipy.optimize import linear_sum_assignment

    classes, y = np.unique(true_labels, return_inverse=True)
    clusters, p = np.unique(predicted, return_inverse=True)
    table = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(table, (p, y), 1)
    rows, cols = linear_sum_assignment(-table)
    new_id = np.arange(len(clusters)) + len(classes)
    new_id[rows] = cols
    unmatched = np.setdiff1d(np.arange(len(clusters)), rows)
    new_id[unmatched] = len(classes) + np.arange(len(unmatched))
    return new_id[p]


def scatter_plot(reduced: np.ndarray, true_labels: np.ndarray, predicted: np.ndarray, path: Path,
                 title: str) -> Path:
    """Side by side: the reduced embedding coloured by true class and by found cluster (clusters take the
    colour of the class they are matched to, so the two panels can be compared at a glance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _subsample_rows(len(reduced), MAX_SCATTER_POINTS)
    pts = reduced[rows]
    three_d = pts.shape[1] >= 3
    fig = plt.figure(figsize=(13, 6))
    _, true_ids = np.unique(true_labels, return_inverse=True)
    found_ids = matched_cluster_ids(true_labels, predicted)
    colour_count = int(max(true_ids.max(), found_ids.max())) + 1
    panels = [(true_ids[rows], f"true class ({len(np.unique(true_labels))})"),
              (found_ids[rows], f"found cluster ({len(np.unique(predicted))}), coloured by matched class")]
    size = 4 if len(pts) > 5000 else 8
    for i, (labels, name) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d" if three_d else None)
        if three_d:
            ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c=_colours(labels, colour_count), s=size, linewidths=0,
                       depthshade=False)
            ax.view_init(elev=25, azim=45)
        else:
            ax.scatter(pts[:, 0], pts[:, 1], c=_colours(labels, colour_count), s=size, linewidths=0)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        if three_d:
            ax.set_zticks([])
    sub = "" if len(rows) == len(reduced) else f" ({len(rows):,} of {len(reduced):,} points shown)"
    fig.suptitle(title + sub)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_plot(true_labels: np.ndarray, predicted: np.ndarray, path: Path) -> Path | None:
    """Rows: true classes; columns: found clusters, ordered by their Hungarian match to the classes."""
    from scipy.optimize import linear_sum_assignment

    classes, y = np.unique(true_labels, return_inverse=True)
    clusters, p = np.unique(predicted, return_inverse=True)
    if len(classes) > MAX_CONFUSION_CLASSES:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = np.zeros((len(classes), len(clusters)), dtype=np.int64)
    np.add.at(table, (y, p), 1)
    row, col = linear_sum_assignment(-table)
    matched = list(col[np.argsort(row)])
    rest = [c for c in np.argsort(-table.sum(0)) if c not in set(matched)]
    order = matched + rest[:max(0, 2 * len(classes) - len(matched))]  # at most 2x as many columns as rows
    shown = table[:, order]
    fig, ax = plt.subplots(figsize=(min(16, 2 + 0.45 * len(order)), min(14, 2 + 0.45 * len(classes))))
    ax.imshow(shown / np.maximum(shown.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:
        for i in range(shown.shape[0]):
            for j in range(shown.shape[1]):
                if shown[i, j]:
                    ax.text(j, i, str(shown[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xlabel(f"found cluster (matched first; {len(clusters)} found)")
    ax.set_ylabel("true class")
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xticks(range(len(order)), [str(clusters[c]) for c in order], rotation=90)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves_plot(history: list[dict[str, Any]], path: Path, embedding_dim: int | None = None) -> Path | None:
    """Loss, kNN accuracy, global std and clustering ACC over epochs (the paper's Fig. 4)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", "training loss"), ("knn_acc", "kNN accuracy"), ("global_std", "global std"),
              ("monitor_acc", "clustering ACC (UMAP + GridShift)"),
              # label-free monitors (nrcc_scale.evaluation.label_free): the curves a run without labels has
              ("monitor_rankme", "RankMe (effective rank)"), ("monitor_stability", "partition stability (ARI)"),
              ("monitor_silhouette", "silhouette (UMAP space)"), ("monitor_clusters", "clusters found")]
    fig, grid = plt.subplots(2, 4, figsize=(4.2 * 4, 3.4 * 2))
    axes = grid.ravel()
    for ax, (key, name) in zip(axes, panels, strict=True):
        pts = [(h["epoch"], h[key]) for h in history if key in h]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o" if len(pts) < 30 else None)
        if key == "global_std" and embedding_dim:
            ax.axhline(1 / np.sqrt(embedding_dim), ls="--", c="grey", lw=1, label="1/sqrt(d): healthy")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
