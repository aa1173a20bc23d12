"""Label-free quality scores, unlabelled data sets, the clusters file and report.html (fast tests).

RankMe against an independent computation (an SVD instead of the Gram matrix's eigenvalues); partition
stability 1 for well separated blobs and < 1 for uniform noise (an arbitrary partition); the size scores by
hand; image folders without class folders (and ``data.labels: none``) give labels -1; a clustering of
embeddings without labels writes one clusters row per sample and a report.html that headless Chromium
renders with the table and the images (skipped when chromium is absent; CI installs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from nrcc_scale.config import EvalConfig
from nrcc_scale.config_load import load_config
from nrcc_scale.data.registry import build_data
from nrcc_scale.evaluation.label_free import (
    RANKME_EPS,
    has_labels,
    partition_stability,
    rankme,
    silhouette,
    size_scores,
    trustworthiness,
)


def _rankme_by_svd(x: np.ndarray, eps: float = RANKME_EPS) -> float:
    # Garrido et al. eq. 1 written out with an SVD (the implementation takes Gram-matrix eigenvalues)
    sigma = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    p = sigma / np.abs(sigma).sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


@pytest.mark.parametrize("shape", [(200, 16), (64, 128), (500, 3)])
def test_rankme_matches_an_independent_computation(shape) -> None:
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape) * rng.uniform(0.1, 3.0, size=shape[1])
    assert rankme(x) == pytest.approx(_rankme_by_svd(x), rel=1e-6)


def test_rankme_limits() -> None:
    rng = np.random.default_rng(0)
    iso = rng.normal(size=(20_000, 8))
    assert rankme(iso) == pytest.approx(8.0, rel=0.01)  # all singular values equal: full rank
    collapsed = np.outer(rng.normal(size=300), rng.normal(size=32))
    assert rankme(collapsed) < 1.01  # rank one: RankMe ~ 1
    two = np.concatenate([collapsed, np.outer(rng.normal(size=300), rng.normal(size=32))], axis=0)
    assert 1.5 < rankme(two) <= 2.0 + 1e-6


def test_stability_is_one_for_separated_blobs_and_below_one_for_noise() -> None:
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], dtype=float)
    blobs = np.concatenate([c + 0.3 * rng.normal(size=(150, 3)) for c in centres])
    assert partition_stability(blobs, bandwidth=2.0) == pytest.approx(1.0)
    noise = rng.uniform(0, 10, size=(600, 3))  # no structure: where the cell grid cuts it is arbitrary
    value = partition_stability(noise, bandwidth=1.5)
    assert value is not None and value < 0.9
    assert partition_stability(blobs[:10], bandwidth=2.0) is None  # too few points for halves


def test_trustworthiness_is_one_for_a_faithful_layout_and_low_for_a_random_one() -> None:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(400, 16))
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    # unit rows: Euclidean order in the layout is the cosine order in the embedding -> every neighbour kept
    assert trustworthiness(features, unit) == pytest.approx(1.0)
    shuffled = trustworthiness(features, rng.normal(size=(400, 3)))
    assert shuffled is not None and 0.4 < shuffled < 0.6  # unrelated layout: chance level, ~0.5
    assert trustworthiness(features[:2], unit[:2]) is None


def test_silhouette_and_size_scores() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=(50, 2)), 20 + rng.normal(size=(50, 2))])
    labels = np.repeat([0, 1], 50)
    assert silhouette(x, labels) > 0.8
    assert silhouette(x, np.zeros(100, dtype=int)) is None
    s = size_scores(np.array([0, 0, 0, 1, 1, 2, 3]))
    assert s["num_clusters"] == 4 and s["singleton_fraction"] == pytest.approx(2 / 7)
    sizes = np.array([3, 2, 1, 1.0])
    assert s["cluster_size_cv"] == pytest.approx(sizes.std() / sizes.mean())
    assert s["largest_cluster_fraction"] == pytest.approx(3 / 7)
    assert has_labels(np.array([0, 1])) and not has_labels(np.array([0, -1])) and not has_labels(None)


def write_unlabelled_folder(root: Path, per_kind: int = 40, side: int = 16, seed: int = 0) -> list[Path]:
    """Three kinds of images (stripes across, stripes down, a bright square), some at the top level and
    some nested two folders deep; no class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for kind in range(3):
        for i in range(per_kind):
            img = rng.integers(0, 60, size=(side, side, 3)).astype(np.uint8)
            if kind == 0:
                img[::4] = 230
            elif kind == 1:
                img[:, ::4] = 230
            else:
                img[4:12, 4:12] = 250
            folder = root if i % 2 == 0 else root / f"batch_{i % 3}" / "more"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"img_{kind}_{i:03d}.png"
            Image.fromarray(img).save(path)
            paths.append(path)
    return paths


def test_folder_without_class_folders_is_unlabelled(tmp_path: Path) -> None:
    paths = write_unlabelled_folder(tmp_path / "imgs", per_kind=4)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    cfg = load_config(overrides=["data.dataset=image_folder", f"data.root={tmp_path / 'imgs'}",
                                 "data.on_bad_file=skip"]).data
    with pytest.warns(UserWarning, match="notes.txt"):
        bundle = build_data(cfg)
    assert len(bundle.evaluate) == len(paths) and bundle.train is bundle.evaluate
    assert not has_labels(bundle.evaluate.labels) and bundle.evaluate.num_classes == 0
    from nrcc_scale.evaluation.clusters_output import sample_ids

    assert sorted(sample_ids(bundle.evaluate, np.arange(len(paths)))) == sorted(str(p) for p in paths)


def test_labels_none_ignores_class_folders(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        write_unlabelled_folder(tmp_path / "root" / cls / "deeper", per_kind=2, seed=len(cls))
    labelled = build_data(load_config(overrides=["data.dataset=image_folder", f"data.root={tmp_path / 'root'}"]).data)
    assert has_labels(labelled.evaluate.labels) and labelled.evaluate.num_classes == 2
    bundle = build_data(load_config(overrides=["data.dataset=image_folder", f"data.root={tmp_path / 'root'}",
                                               "data.labels=none"]).data)
    assert len(bundle.evaluate) == 12 and not has_labels(bundle.evaluate.labels)
    digits = build_data(load_config(overrides=["data.labels=none"]).data)
    assert len(digits.evaluate) == 1797 and not has_labels(digits.evaluate.labels)


def test_stl10_unlabelled_split_is_evaluable(tmp_path: Path) -> None:
    from test_data_formats import write_stl10

    write_stl10(tmp_path, n_unlabeled=7)
    cfg = load_config(overrides=["data.dataset=stl10", f"data.root={tmp_path}", "data.use_unlabeled=true",
                                 "data.labels=none"]).data
    bundle = build_data(cfg)
    assert len(bundle.evaluate) == 7 and not has_labels(bundle.evaluate.labels)
    assert len(bundle.train) == 12 + 7
    assert bundle.evaluate.image(0).shape == (96, 96, 3)


def _blob_run(out: Path, labelled: bool) -> dict:
    from nrcc_scale.evaluation.checkpoint_eval import evaluate_arrays

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 16)) * 3
    y = np.repeat(np.arange(4), 60)
    x = (centres[y] + 0.3 * rng.normal(size=(240, 16))).astype(np.float32)
    metrics, table = evaluate_arrays(x, y if labelled else np.full(240, -1), out, EvalConfig(baselines=False))
    return {"metrics": metrics, "table": table, "n": 240}


def test_embeddings_without_labels_give_label_free_scores_and_a_clusters_row_per_sample(tmp_path: Path) -> None:
    from nrcc_scale.evaluation.clusters_output import find_clusters_file, read_table

    run = _blob_run(tmp_path, labelled=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "nmi" not in metrics and "knn_acc" not in metrics and metrics["labelled"] is False
    assert metrics["stability"] == pytest.approx(1.0) and metrics["num_clusters"] == 4
    assert 1.0 <= metrics["rankme"] <= 16 and metrics["silhouette"] > 0.5
    assert "RankMe" in run["table"] and "no labels" in run["table"]
    table = read_table(find_clusters_file(tmp_path))
    assert len(table["cluster"]) == run["n"] and sorted(set(table["cluster"])) == [0, 1, 2, 3]
    assert np.all(table["distance_to_mode"] >= 0) and np.all((table["confidence"] >= 0) & (table["confidence"] <= 1))
    assert np.median(table["confidence"]) > 0.5  # tight blobs: points sit near their mode
    assert (tmp_path / "cluster_sizes.png").is_file() and (tmp_path / "report.html").is_file()


def test_confidence_is_one_at_the_mode_and_zero_half_way() -> None:
    from nrcc_scale.evaluation.clusters_output import mode_distances

    modes = np.array([[0.0, 0.0], [2.0, 0.0]])
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    dist, conf = mode_distances(pts, modes, np.array([0, 0, 0]))
    assert dist == pytest.approx([0.0, 1.0, 0.5]) and conf == pytest.approx([1.0, 0.0, 1 - 0.5 / 1.5])


def test_mode_distances_in_blocks_match_a_brute_force_loop() -> None:
    """Row blocks (no N x M matrix) give each point's own-mode distance and confidence exactly as a loop over
    points and modes does; unassigned points (-1) get NaN and 0."""
    from nrcc_scale.evaluation.clusters_output import mode_distances

    rng = np.random.default_rng(0)
    pts, modes = rng.normal(size=(103, 3)), rng.normal(size=(9, 3))
    clusters = rng.integers(-1, 9, 103)
    dist, conf = mode_distances(pts, modes, clusters, block=10)
    for i, c in enumerate(clusters):
        if c < 0:
            assert np.isnan(dist[i]) and conf[i] == 0.0
            continue
        d = [float(np.linalg.norm(pts[i] - m)) for m in modes]
        nxt = min(v for j, v in enumerate(d) if j != c)
        assert dist[i] == pytest.approx(d[c]) and conf[i] == pytest.approx(min(max(1 - d[c] / nxt, 0.0), 1.0))


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render_with_chromium(html: Path, tmp: Path, size: tuple[int, int] = (1400, 2400)) -> tuple[Path, str]:
    """(screenshot PNG, DOM after rendering) of a local page, offline, with a fresh profile."""
    browser = chromium()
    shot = tmp / "shot.png"
    common = [browser, *CHROMIUM_FLAGS, f"--window-size={size[0]},{size[1]}"]
    subprocess.run([*common, f"--user-data-dir={tmp / 'profile1'}", f"--screenshot={shot}", html.as_uri()],
                   check=True, capture_output=True, timeout=120)
    dom = subprocess.run([*common, f"--user-data-dir={tmp / 'profile2'}", "--dump-dom", html.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    return shot, dom


def check_rendered_report(html: Path, tmp: Path, expect_images: int) -> None:
    from PIL import Image

    text = html.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text  # self-contained
    shot, dom = render_with_chromium(html, tmp)
    assert "results-table" in dom and "RankMe" in dom
    assert dom.count("data:image/png;base64,") >= expect_images
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    # the top (title + table) has text on white; the images below carry plenty of non-white pixels
    assert pixels[:400].std() > 5, "the table region of the screenshot is blank"
    assert (pixels < 200).mean() > 0.02, "the screenshot shows no images"
    blank = tmp / "blank.html"
    blank.write_text("<html><body></body></html>")
    blank_shot, _ = render_with_chromium(blank, tmp / "blank")
    assert not np.array_equal(np.asarray(Image.open(blank_shot).convert("L")), pixels.astype(np.uint8))


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (scripts/setup.sh installs it as root)")
def test_report_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    _blob_run(tmp_path / "run", labelled=True)
    (tmp_path / "blank").mkdir()
    check_rendered_report(tmp_path / "run" / "report.html", tmp_path, expect_images=3)


@pytest.mark.parametrize("builder", ["faiss-exact", "pynndescent"])
def test_calibration_distances_read_off_the_knn_graph_equal_a_direct_search(builder: str) -> None:
    """The pipeline hands assign's calibration each row's nearest-other distance from its kNN graph instead
    of searching every row again: equal to the direct search, duplicates (self not in column 0) included."""
    from nrcc_scale.cluster.knn import knn_graph
    from nrcc_scale.evaluation.clusters_output import nearest_other_distance
    from nrcc_scale.evaluation.pipeline import nearest_other_from_graph

    x = np.random.default_rng(0).standard_normal((3000, 32)).astype(np.float32)
    x[5] = x[6]  # an exact duplicate: its nearest other row is at distance 0
    graph = knn_graph(x, 10, metric="cosine", backend=builder)
    from_graph = nearest_other_from_graph(graph.indices, graph.distances)
    direct = nearest_other_distance(x)
    assert from_graph[5] < 1e-5 and from_graph[6] < 1e-5
    close = np.isclose(from_graph, direct, atol=1e-5)
    assert close.mean() >= (1.0 if builder == "faiss-exact" else graph.recall - 0.02), close.mean()
