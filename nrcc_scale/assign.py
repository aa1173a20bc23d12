"""``python -m nrcc_scale.assign`` — put new images into the clusters of a trained run.

    python -m nrcc_scale.assign --run RUN_DIR --images DIR --out assignments.parquet [--shards 8] [--no-ray]

The images below ``DIR`` (any nesting; class folders, if any, are ignored) are embedded with the run's target
encoder at its training resolution, normalised as the run's own images — by Ray tasks in parallel when there
are at least ``--ray-min-images`` of them (as ``python -m nrcc_scale.evaluate`` does), else in this process.
Each image then gets the cluster its :data:`~nrcc_scale.evaluation.clusters_output.ASSIGN_K` nearest training
embeddings (faiss, cosine) vote for, each vote weighted by ``1 / (distance + eps)`` (``eps``: 1% of the run's
median nearest-neighbour distance, so a copy of a training image gets that image's cluster); an image whose nearest
training embedding is farther than the run's calibrated distance (``assign_calibration.json``: the 99th
percentile of the training images' own nearest-neighbour distances) is ``unassigned`` (cluster -1).
Its position in the run's UMAP space is estimated as the same weighted mean of its neighbours' positions,
from which ``distance_to_mode`` and ``confidence`` are computed as for the run's own samples.

The output has the columns of the run's ``clusters.parquet`` (``.csv`` when ``--out`` ends in .csv).
Needs a run evaluated by this version (``clusters.parquet``, ``cluster_modes.npy``, ``reduced.npy``,
``assign_calibration.json``, ``embeddings.npy`` and a checkpoint in the run folder).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nrcc_scale.cli import run_main
from nrcc_scale.config import ConfigError

RAY_MIN_IMAGES = 4096
#: vote weights are 1 / (distance + VOTE_EPS_FRACTION * the run's median nearest-neighbour distance): an exact
#: copy of a training image outweighs its other neighbours (it gets that image's cluster), and no division by 0
VOTE_EPS_FRACTION = 0.01


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nrcc_scale.assign", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run folder written by train / evaluate")
    parser.add_argument("--images", type=Path, required=True, help="folder of new images (any nesting)")
    parser.add_argument("--out", type=Path, required=True, help="output file (.parquet or .csv)")
    parser.add_argument("--shards", type=int, default=0, help="Ray embedding tasks (default: one per CPU)")
    parser.add_argument("--no-ray", action="store_true", help="embed in this process, however many images")
    parser.add_argument("--ray-min-images", type=int, default=RAY_MIN_IMAGES,
                        help=f"embed with Ray tasks from this many images on (default {RAY_MIN_IMAGES})")
    parser.add_argument("--batch-size", type=int, default=256)
    return parser


def embed_folder_shard(checkpoint: str, start: int, stop: int, out_path: str, batch_size: int, *, images: str,
                       mean: Sequence[float], std: Sequence[float], on_bad_file: str,
                       use_gpu: bool | None = None) -> str:
    """One Ray task: embed rows [start, stop) of the image folder (same file layout as ``embed_shard``)."""
    from nrcc_scale.evaluation.checkpoint_eval import load_trained
    from nrcc_scale.evaluation.embed import embed_source
    from nrcc_scale.evaluation.parallel_embed import task_device
    from nrcc_scale.utils.files import atomic_path

    device = task_device(use_gpu)
    trained = load_trained(Path(checkpoint), device)
    source = folder_source(Path(images), mean, std, on_bad_file)
    emb = embed_source(trained.method.embedding_model(), source, trained.resolution, device, batch_size,
                       indices=np.arange(start, stop))
    with atomic_path(out_path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, indices=emb.indices, labels=emb.labels, features=emb.features)
    return out_path


def folder_source(images: Path, mean: Sequence[float], std: Sequence[float], on_bad_file: str):
    from nrcc_scale.config import DataConfig
    from nrcc_scale.data.unlabelled import unlabelled_folder_source

    source = unlabelled_folder_source(images.name or "images", images,
                                      DataConfig(dataset="image_folder", root=str(images), on_bad_file=on_bad_file,
                                                 verify_files="none"))
    source.mean, source.std = tuple(mean), tuple(std)
    source.base.mean, source.base.std = tuple(mean), tuple(std)
    return source


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise ConfigError(f"--run: {path} not found ({what}); evaluate the run with this version first "
                          f"(python -m nrcc_scale.evaluate --checkpoint RUN)")
    return path


def assign_vote(train_features: np.ndarray, train_clusters: np.ndarray, train_reduced: np.ndarray,
                features: np.ndarray, threshold: float, k: int,
                eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster or -1, estimated UMAP position, nearest training distance) of every new embedding."""
    from nrcc_scale.cluster.knn import knn_search

    k = min(k, len(train_features))
    nn = knn_search(train_features, features, k, metric="cosine")
    weights = 1.0 / (nn.distances.astype(np.float64) + max(eps, 1e-12))
    votes = np.zeros((len(features), int(train_clusters.max()) + 1))
    np.add.at(votes, (np.repeat(np.arange(len(features)), k), train_clusters[nn.indices].ravel()), weights.ravel())
    clusters = votes.argmax(1).astype(np.int64)
    nearest = nn.distances[:, 0].astype(np.float64)
    clusters[nearest > threshold] = -1
    position = (weights[:, :, None] * train_reduced[nn.indices]).sum(1) / weights.sum(1, keepdims=True)
    return clusters, position, nearest


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    args = build_parser().parse_args(argv)
    from nrcc_scale.data.base import DataError
    from nrcc_scale.engine.checkpoint import find_latest_checkpoint
    from nrcc_scale.evaluation import clusters_output as co

    run = args.run
    if not run.is_dir():
        raise ConfigError(f"--run {run}: no such run folder")
    if args.out.suffix not in (".parquet", ".csv"):
        raise ConfigError(f"--out {args.out}: give a file name ending in .parquet or .csv")
    table = co.find_clusters_file(run)
    if table is None:
        _require(run / co.CLUSTERS_PARQUET, "the run's clusters")
    _require(run / co.CALIBRATION_FILE, "the assign calibration")
    calibration = co.read_calibration(run)
    if "mean" not in calibration:
        raise ConfigError(f"--run {run}: the run was evaluated from embeddings, not images; assign needs a "
                          "run trained on images")
    modes = np.load(_require(run / co.MODES_FILE, "the cluster modes"))
    reduced = np.load(_require(run / co.REDUCED_FILE, "the UMAP coordinates"))
    train_features = np.load(_require(run / "embeddings.npy", "the training embeddings"))
    checkpoint = find_latest_checkpoint(run)
    if checkpoint is None:
        raise ConfigError(f"--run {run}: no checkpoint (state.pt) in the run folder")
    if not args.images.is_dir():
        raise ConfigError(f"--images {args.images}: no such folder")
    from nrcc_scale.engine.checkpoint import read_state

    cfg_data = read_state(checkpoint).config["data"]
    try:
        source = folder_source(args.images, calibration["mean"], calibration["std"], cfg_data["on_bad_file"])
    except DataError as err:
        raise ConfigError(f"--images {args.images}: {err}") from None
    train_clusters = co.read_table(table)["cluster"].astype(np.int64)
    if len(train_clusters) != len(train_features):
        raise ConfigError(f"--run {run}: {table.name} has {len(train_clusters)} rows but embeddings.npy "
                          f"{len(train_features)}; re-evaluate the run")

    n = len(source)
    print(f"assigning {n} images from {args.images} to the {len(modes)} clusters of {run}", flush=True)
    emb = _embed(args, checkpoint, source, calibration, cfg_data["on_bad_file"])
    clusters, position, _ = assign_vote(train_features, train_clusters, reduced, emb.features,
                                        float(calibration["threshold"]), int(calibration.get("k", co.ASSIGN_K)),
                                        VOTE_EPS_FRACTION * float(calibration["median_nearest_distance"]))
    columns = co.cluster_columns(np.arange(n), co.sample_ids(source, np.arange(n)), clusters, position, modes)
    out = co.write_table(args.out, columns)
    if out != args.out:  # pyarrow missing: say where the CSV went
        print(f"note: pyarrow is not installed; wrote CSV to {out}", file=sys.stderr)
    unassigned = int((clusters < 0).sum())
    print(f"{n - unassigned} images assigned to {len(np.unique(clusters[clusters >= 0]))} clusters, {unassigned} "
          f"unassigned (nearest training image farther than {calibration['threshold']:.4g})")
    print(f"output: {out}")
    return 0


def _embed(args: argparse.Namespace, checkpoint: Path, source, calibration: dict, on_bad_file: str):
    import torch

    from nrcc_scale.evaluation.checkpoint_eval import load_trained
    from nrcc_scale.evaluation.embed import embed_source

    n = len(source)
    if args.no_ray or n < args.ray_min_images:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        trained = load_trained(checkpoint, device)
        return embed_source(trained.method.embedding_model(), source, trained.resolution, device, args.batch_size,
                            progress=True, desc="embed")
    from nrcc_scale.config_load import config_from_dict
    from nrcc_scale.engine.checkpoint import read_state
    from nrcc_scale.evaluation.parallel_embed import embed_with_ray
    from nrcc_scale.ray_setup import init_ray

    cfg = config_from_dict(read_state(checkpoint).config)
    print(init_ray(cfg.ray), flush=True)
    shards = args.shards or max(1, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="nrcc-assign-") as tmp:
        return embed_with_ray(checkpoint, n, Path(tmp), shards, args.batch_size,
                              task=embed_folder_shard,
                              task_kwargs={"images": str(args.images.resolve()), "mean": calibration["mean"],
                                           "std": calibration["std"], "on_bad_file": on_bad_file})


if __name__ == "__main__":
    sys.exit(run_main(main))
