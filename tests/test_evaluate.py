"""``python -m nrcc_scale.evaluate`` on embeddings and on a checkpoint (Ray-parallel embedding), the shard
bookkeeping (every sample exactly once), and the linear probe against scikit-learn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nrcc_scale.evaluation.linear_probe import linear_probe
from nrcc_scale.evaluation.parallel_embed import merge_shards, shard_bounds

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


def _sphere_blobs(n: int, k: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, d))
    y = rng.integers(0, k, n)
    x = means[y] + 0.15 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


@pytest.mark.parametrize(("n", "shards"), [(10, 3), (1797, 4), (5, 8), (1, 1)])
def test_shards_cover_every_row_once(n: int, shards: int) -> None:
    bounds = shard_bounds(n, shards)
    rows = np.concatenate([np.arange(a, b) for a, b in bounds])
    assert np.array_equal(rows, np.arange(n))
    assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_merge_refuses_missing_or_duplicated_samples(tmp_path: Path) -> None:
    def shard(name: str, idx: list[int]) -> Path:
        path = tmp_path / name
        np.savez(path, indices=np.array(idx), labels=np.array(idx) % 2, features=np.eye(6)[idx].astype(np.float32))
        return path

    good = merge_shards([shard("b.npz", [3, 4, 5]), shard("a.npz", [0, 1, 2])], 6)
    assert np.array_equal(good.indices, np.arange(6))
    assert np.array_equal(good.features, np.eye(6, dtype=np.float32))  # rows follow their sample index
    with pytest.raises(RuntimeError, match="1 missing, 1 duplicated"):
        merge_shards([shard("c.npz", [0, 1, 2]), shard("d.npz", [2, 3, 4])], 6)


def test_linear_probe_matches_scikit_learn_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = _sphere_blobs(600, 5, 16, seed=1)
    x = x + 0.3 * np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)  # not trivially separable
    ours = linear_probe(x[:400], y[:400], x[400:], y[400:], num_classes=5, epochs=60)
    sk = LogisticRegression(max_iter=2000).fit(x[:400], y[:400]).score(x[400:], y[400:])
    assert ours.test_accuracy > 0.5
    assert abs(ours.test_accuracy - sk) < 0.05


def test_evaluate_embeddings_writes_the_report(tmp_path: Path) -> None:
    x, y = _sphere_blobs(1500, 6, 32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "nrcc_scale.evaluate", "--embeddings", str(tmp_path / "x.npy"),
                           "--labels", str(tmp_path / "y.npy"), "--out", str(out), "eval.n_neighbors=15"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_clusters"] == 6 and metrics["ari"] > 0.99  # well-separated blobs, no k given
    assert metrics["baselines"]["kmeans_true_k"]["num_clusters"] == 6
    assert {"knn", "reduce", "cluster"} <= set(metrics["backends"])
    assert "backends: knn faiss" in proc.stdout
    for name in ("umap_scatter.png", "confusion.png"):
        assert (out / name).stat().st_size > 5_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--embeddings", "missing.npy", "--labels", "y.npy"], "--embeddings file missing.npy does not exist"),
        (["--embeddings", "x.npy", "--labels", "nolabels.npy"], "--labels file nolabels.npy does not exist"),
        (["--embeddings", "x.npy", "--labels", "y.npy", "train.epochs=3"], "evaluate only takes eval.* keys"),
        (["--embeddings", "x.npy", "--labels", "y.npy", "eval.bandwidht=1"], "unknown key 'eval.bandwidht'"),
        (["--checkpoint", "nowhere"], "--checkpoint nowhere: no nrcc-scale checkpoint"),
    ],
)
def test_evaluate_mistakes_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 3), dtype=np.float32))
    np.save(tmp_path / "y.npy", np.zeros(4, dtype=np.int64))
    proc = subprocess.run([sys.executable, "-m", "nrcc_scale.evaluate", *args], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_evaluate_checkpoint_embeds_every_sample_once_on_ray(tmp_path: Path) -> None:
    train = subprocess.run([sys.executable, "-m", "nrcc_scale.train", "--no-ray", "--no-eval",
                            f"storage_path={tmp_path}", "name=r", "train.epochs=1", "train.batch_size=128",
                            "model.projector_hidden=64", "model.predictor_hidden=64", "train.use_gpu=false"],
                           cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "nrcc_scale.evaluate", "--checkpoint", str(tmp_path / "r"),
                           "--out", str(out), "--shards", "3", "eval.linear_eval=false"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(list((out / "shards").glob("shard_*.npz"))) == 3
    assert np.array_equal(np.load(out / "indices.npy"), np.arange(1797))
    labels = np.load(out / "labels.npy")
    from sklearn.datasets import load_digits

    assert np.array_equal(labels, load_digits().target)  # each embedding sits at its own sample's row
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["num_samples"] == 1797 and "raw_pixels_umap_gridshift" in \
        metrics["baselines"]
    assert (out / "curves.png").is_file()


def test_found_clusters_take_the_colour_id_of_their_matched_class() -> None:
    from nrcc_scale.evaluation.report import matched_cluster_ids

    y = np.array([0, 0, 1, 1, 2, 2, 2])
    found = np.array([5, 5, 7, 7, 9, 9, 3])  # cluster 3 is an extra split of class 2
    assert matched_cluster_ids(y, found).tolist() == [0, 0, 1, 1, 2, 2, 3]
