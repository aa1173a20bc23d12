"""A folder of images without class folders, end to end (slow: trains, and one test runs a Tune sweep).

A generated folder (three kinds of images, some nested two folders deep, no class folders) trains one
epoch in process and evaluates: the run folder has one clusters row per image (the file paths), the gallery
PNGs, report.html (rendered by headless Chromium when installed) and label-free scores only. Then
``python -m nrcc_scale.assign`` on the same images puts >= 99% of them in the cluster the run gave them;
bad input is one line and exit status 2. A Ray Tune sweep ranks trials by RankMe on the same folder.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_label_free import check_rendered_report, chromium, write_unlabelled_folder

from nrcc_scale.evaluation.clusters_output import find_clusters_file, read_table

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.dataset=image_folder", "data.resolution=16", "train.batch_size=32", "train.num_workers=1",
         "model.projector_hidden=128", "model.predictor_hidden=128", "model.projector_dim=64",
         "train.use_gpu=false", "eval.linear_eval=false"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update({"PYTHONUNBUFFERED": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    return env


def _run(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def unlabelled_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("unlabelled")
    images = tmp / "photos"
    paths = write_unlabelled_folder(images)
    proc = _run(["nrcc_scale.train", "--no-ray", *SMALL, f"data.root={images}", "train.epochs=1",
                 "train.monitor_every=1", f"storage_path={tmp / 'runs'}", "name=flat"])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return {"tmp": tmp, "images": images, "paths": paths, "run": tmp / "runs" / "flat", "stdout": proc.stdout}


def test_unlabelled_folder_trains_one_epoch_and_evaluates(unlabelled_run: dict) -> None:
    run, paths = unlabelled_run["run"], unlabelled_run["paths"]
    out = unlabelled_run["stdout"]
    assert out.count("no labels:") == 1 and "RankMe" in out
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("nmi", "acc", "ari", "ami", "knn_acc", "linear_acc"):
        assert key not in metrics, key
    assert "kmeans_true_k" not in metrics["baselines"]
    for key in ("rankme", "stability", "silhouette", "num_clusters", "cluster_size_cv", "singleton_fraction"):
        assert key in metrics, key
    assert 1.0 <= metrics["rankme"] <= 64 and metrics["num_samples"] == len(paths)
    table = read_table(find_clusters_file(run))
    assert len(table["sample_id"]) == len(paths)
    assert sorted(table["sample_id"]) == sorted(str(p) for p in paths)
    assert set(np.unique(table["cluster"])) == set(range(metrics["num_clusters"]))
    assert (run / "clusters.png").stat().st_size > 2_000 and (run / "cluster_sizes.png").is_file()
    assert len(list((run / "cluster_gallery").glob("cluster_*.png"))) == min(16, metrics["num_clusters"])
    assert (run / "report.html").is_file()
    # the label-free monitors are in the training history (the curves plot them)
    import torch

    from nrcc_scale.engine.checkpoint import find_latest_checkpoint

    history = torch.load(find_latest_checkpoint(run) / "state.pt", weights_only=False)["history"]
    assert "monitor_rankme" in history[-1] and "knn_acc" not in history[-1]


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed")
def test_run_report_renders(unlabelled_run: dict, tmp_path: Path) -> None:
    (tmp_path / "blank").mkdir()
    check_rendered_report(unlabelled_run["run"] / "report.html", tmp_path, expect_images=4)


def test_assign_puts_training_images_in_their_clusters(unlabelled_run: dict) -> None:
    run = unlabelled_run["run"]
    out = unlabelled_run["tmp"] / "assigned.parquet"
    proc = _run(["nrcc_scale.assign", "--run", str(run), "--images", str(unlabelled_run["images"]),
                 "--out", str(out)])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "embed" in proc.stderr  # the progress bar
    new = read_table(out)
    old = read_table(find_clusters_file(run))
    assert list(new) == list(old)  # the same file format
    given = dict(zip(old["sample_id"], old["cluster"], strict=True))
    same = np.mean([given[s] == c for s, c in zip(new["sample_id"], new["cluster"], strict=True)])
    assert len(new["sample_id"]) == len(unlabelled_run["paths"]) and same >= 0.99, same


def test_assign_bad_input_is_one_line_exit_2(unlabelled_run: dict, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(["--run", str(tmp_path / "nope"), "--images", str(unlabelled_run["images"])], "no such run"),
             (["--run", str(unlabelled_run["run"]), "--images", str(empty)], "no images found")]
    for args, message in cases:
        proc = _run(["nrcc_scale.assign", *args, "--out", str(tmp_path / "x.parquet")], timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], proc.stderr


def test_tune_sweep_ranks_an_unlabelled_folder_by_rankme(unlabelled_run: dict, tmp_path: Path) -> None:
    sweep = tmp_path / "label_free.yaml"
    sweep.write_text(yaml.safe_dump({
        "base": {"configs": ["configs/default.yaml"],
                 "overrides": [*SMALL, f"data.root={unlabelled_run['images']}", "train.epochs=2",
                               "train.monitor_every=1", "eval.baselines=false", "eval.plots=false"]},
        "search_space": {"method.nrcc.weight": {"grid": [0.1, 1.0]}},
        "tune": {"name": "label_free", "storage_path": str(tmp_path), "metric": "rankme", "mode": "max",
                 "max_concurrent_trials": 2,
                 "scheduler": {"type": "asha", "metric": "monitor_rankme", "grace_period": 1}}}))
    proc = _run(["nrcc_scale.tune", "--config", str(sweep), "ray.num_cpus=2"], timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    with (tmp_path / "label_free" / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # ASHA may stop the weaker trial after its grace epoch (it compares monitor_rankme); a finished trial
    # carries the final label-free score
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"done", "stopped early"}, rows
    finished = [r for r in rows if r["status"] == "done"]
    assert finished and all(float(r["rankme"]) >= 1.0 for r in finished), rows
    assert "nmi" not in rows[0] or all(r["nmi"] == "" for r in rows)
    assert "best trial" in out and "rankme" in out
    # a labelled metric on unlabelled data is refused before anything runs
    bad = _run(["nrcc_scale.tune", "--config", str(sweep), "tune.metric=nmi"], timeout=120)
    assert bad.returncode == 2 and "needs labels" in bad.stderr


def test_assign_with_ray_tasks_matches_in_process(unlabelled_run: dict) -> None:
    """Large folders are embedded by Ray tasks (forced here with --ray-min-images 1): same assignments."""
    tmp = unlabelled_run["tmp"]
    common = ["nrcc_scale.assign", "--run", str(unlabelled_run["run"]), "--images", str(unlabelled_run["images"])]
    local = _run([*common, "--out", str(tmp / "local.csv"), "--no-ray"])
    ray = _run([*common, "--out", str(tmp / "ray.csv"), "--ray-min-images", "1", "--shards", "2"])
    assert local.returncode == 0 and ray.returncode == 0, (ray.stdout + ray.stderr)[-3000:]
    assert "embed (Ray)" in ray.stderr
    a, b = read_table(tmp / "local.csv"), read_table(tmp / "ray.csv")
    assert list(a["sample_id"]) == list(b["sample_id"])
    assert np.mean(a["cluster"] == b["cluster"]) >= 0.99
