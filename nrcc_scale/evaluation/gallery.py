"""What the found clusters look like: image galleries and the cluster-size plot of one run.

* ``clusters.png`` — the :data:`GALLERY_ROWS` largest clusters as rows, each the :data:`GALLERY_COLUMNS`
  images nearest its mode (UMAP space), labelled with the cluster id, its size and, when the data have
  labels, its majority class and that class's share of the cluster.
* ``cluster_gallery/cluster_<id>.png`` — one image per cluster for the :data:`PER_CLUSTER_FILES` largest
  clusters: up to :data:`PER_CLUSTER_IMAGES` exemplars nearest the mode.
* ``cluster_sizes.png`` — the cluster sizes, largest first, and their histogram.

Mosaics are composed with PIL (no matplotlib figure per cluster), so the default digits run pays well under
a second for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

GALLERY_ROWS = 10
GALLERY_COLUMNS = 12
PER_CLUSTER_FILES = 16
PER_CLUSTER_IMAGES = 36
TILE = 48  # pixels per exemplar in the mosaics
LABEL_WIDTH = 140
GALLERY_DIR = "cluster_gallery"


def clusters_by_size(predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cluster ids, sizes), largest first (ties: smaller id first)."""
    ids, counts = np.unique(predicted, return_counts=True)
    order = np.lexsort((ids, -counts))
    return ids[order], counts[order]


def exemplars(members: np.ndarray, reduced: np.ndarray, mode: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` members (positions into ``reduced``) nearest ``mode``."""
    d = ((reduced[members] - mode[None, :]) ** 2).sum(1)
    return members[np.argsort(d, kind="stable")[:count]]


def _tile(source: Any, row: int) -> Any:
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(source.image(int(row))))
    # small images (digits: 8 px) are enlarged with nearest neighbour so their pixels stay visible
    resample = Image.NEAREST if max(img.size) < TILE else Image.BILINEAR
    scale = TILE / max(img.size)
    img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), resample)
    canvas = Image.new("RGB", (TILE, TILE), (255, 255, 255))
    canvas.paste(img, ((TILE - img.size[0]) // 2, (TILE - img.size[1]) // 2))
    return canvas


def majority(labels: np.ndarray | None, members: np.ndarray, class_names: list[str]) -> str | None:
    from nrcc_scale.evaluation.label_free import has_labels

    if not has_labels(labels):
        return None
    values, counts = np.unique(labels[members], return_counts=True)
    best = int(np.argmax(counts))
    label = int(values[best])
    name = class_names[label] if 0 <= label < len(class_names) else str(label)
    return f"majority: {name} ({counts[best] / len(members):.0%})"


def _mosaic(source: Any, rows_per_line: list[np.ndarray], captions: list[list[str]], columns: int) -> Any:
    from PIL import Image, ImageDraw

    height = TILE + 4
    sheet = Image.new("RGB", (LABEL_WIDTH + columns * (TILE + 2), max(1, len(rows_per_line)) * height),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (rows, caption) in enumerate(zip(rows_per_line, captions, strict=True)):
        y = r * height + 2
        for i, line in enumerate(caption):
            draw.text((6, y + 2 + 13 * i), line, fill=(0, 0, 0))
        for c, row in enumerate(rows):
            sheet.paste(_tile(source, int(row)), (LABEL_WIDTH + c * (TILE + 2), y))
    return sheet


def write_galleries(out_dir: Path, source: Any, rows: np.ndarray, predicted: np.ndarray, reduced: np.ndarray,
                    modes: np.ndarray, labels: np.ndarray | None = None,
                    class_names: list[str] | None = None) -> dict[str, str]:
    """clusters.png and cluster_gallery/*.png (``source.image(rows[i])`` is sample i), plus the sizes plot."""
    files = {"cluster_sizes": str(cluster_sizes_plot(predicted, out_dir / "cluster_sizes.png"))}
    if source is None:
        return files
    ids, sizes = clusters_by_size(predicted)
    names = list(class_names or [])
    positions = {int(c): np.flatnonzero(predicted == c) for c in ids[:max(GALLERY_ROWS, PER_CLUSTER_FILES)]}

    def caption(c: int, size: int) -> list[str]:
        lines = [f"cluster {c}", f"{size} images"]
        note = majority(labels, positions[c], names)
        return lines + ([note] if note else [])

    top = [int(c) for c in ids[:GALLERY_ROWS]]
    lines = [rows[exemplars(positions[c], reduced, modes[c], GALLERY_COLUMNS)] for c in top]
    sheet = _mosaic(source, lines, [caption(c, len(positions[c])) for c in top], GALLERY_COLUMNS)
    sheet.save(out_dir / "clusters.png")
    files["gallery"] = str(out_dir / "clusters.png")
    folder = out_dir / GALLERY_DIR
    folder.mkdir(exist_ok=True)
    per_line = 12
    for c in [int(c) for c in ids[:PER_CLUSTER_FILES]]:
        chosen = rows[exemplars(positions[c], reduced, modes[c], PER_CLUSTER_IMAGES)]
        chunks = [chosen[i:i + per_line] for i in range(0, len(chosen), per_line)]
        caps = [caption(c, len(positions[c]))] + [[] for _ in chunks[1:]]
        _mosaic(source, chunks, caps, per_line).save(folder / f"cluster_{c:04d}.png")
    files["cluster_gallery"] = str(folder)
    return files


def cluster_sizes_plot(predicted: np.ndarray, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, sizes = clusters_by_size(predicted)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    shown = sizes[:200]
    axes[0].bar(np.arange(len(shown)), shown, color="tab:blue")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("cluster rank (largest first" + (", first 200)" if len(sizes) > 200 else ")"))
    axes[0].set_ylabel("images")
    axes[0].set_title(f"{len(sizes)} clusters, sizes")
    bins = np.unique(np.geomspace(1, max(2, sizes.max()) + 1, num=min(30, len(sizes) + 1)).astype(int))
    axes[1].hist(sizes, bins=bins, color="tab:orange")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("cluster size (images)")
    axes[1].set_ylabel("clusters")
    axes[1].set_title("size histogram")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
