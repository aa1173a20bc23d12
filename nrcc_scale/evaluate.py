"""``python -m nrcc_scale.evaluate`` — the clustering evaluation on its own.

    python -m nrcc_scale.evaluate --checkpoint RUN/checkpoint_000060 [--out DIR] [--shards 8] [eval.key=value ...]
    python -m nrcc_scale.evaluate --embeddings X.npy --labels y.npy [--out DIR] [eval.key=value ...]

From a checkpoint, the evaluation set is embedded by Ray tasks in parallel (``--shards``; ``--no-ray`` embeds
in this process), then kNN graph (faiss) -> UMAP -> GridShift -> NMI / ACC / ARI / AMI next to the baselines,
with the probes. From embeddings, only the clustering stages run. Writes metrics.json, the UMAP scatter, the
confusion matrix and (from a checkpoint) the training curves; prints the table and which backend ran each stage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nrcc_scale.cli import run_main
from nrcc_scale.config import ConfigError, EvalConfig
from nrcc_scale.config_load import apply_overrides, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nrcc_scale.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a checkpoint folder (or a run folder: its latest)")
    source.add_argument("--embeddings", type=Path, help="an N x D .npy matrix of embeddings")
    parser.add_argument("--labels", type=Path,
                        help="N ground-truth labels (.npy), with --embeddings; without: label-free scores only")
    parser.add_argument("--out", type=Path, help="output folder (default: beside the checkpoint / embeddings)")
    parser.add_argument("--shards", type=int, default=0, help="Ray embedding tasks (default: one per CPU)")
    parser.add_argument("--no-ray", action="store_true", help="embed in this process")
    parser.add_argument("overrides", nargs="*", metavar="eval.key=value", help="evaluation settings")
    return parser


def _check_overrides(overrides: list[str]) -> None:
    for text in overrides:
        if not text.startswith("eval."):
            raise ConfigError(f"override '{text}': evaluate only takes eval.* keys (e.g. eval.bandwidth=0.3)")


def _load_array(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ConfigError(f"{what} file {path} is not a .npy array: {err}") from None


def _from_embeddings(args: argparse.Namespace) -> tuple[dict, str, Path]:
    from nrcc_scale.evaluation.checkpoint_eval import evaluate_arrays

    features = _load_array(args.embeddings, "--embeddings").astype(np.float32, copy=False)
    # without --labels every sample is unlabelled (-1): only the label-free scores are computed
    labels = _load_array(args.labels, "--labels") if args.labels is not None else \
        np.full(len(features), -1, dtype=np.int64)
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise ConfigError(f"--embeddings {args.embeddings} has shape {features.shape} and --labels {args.labels} "
                          f"{labels.shape}: expected N x D and N")
    ecfg: EvalConfig = load_config(overrides=args.overrides).eval
    out = args.out or args.embeddings.parent / "evaluation"
    metrics, table = evaluate_arrays(features, labels, out, ecfg, title=f"{args.embeddings.name}: UMAP + GridShift")
    return metrics, table, out


def _from_checkpoint(args: argparse.Namespace) -> tuple[dict, str, Path]:
    from nrcc_scale.data.registry import build_data
    from nrcc_scale.engine.checkpoint import CheckpointError, find_latest_checkpoint, read_state
    from nrcc_scale.evaluation.checkpoint_eval import evaluate_checkpoint

    checkpoint = args.checkpoint
    if not (checkpoint / "state.pt").is_file():
        latest = find_latest_checkpoint(checkpoint) if checkpoint.is_dir() else None
        if latest is None:
            raise ConfigError(f"--checkpoint {checkpoint}: no nrcc-scale checkpoint (state.pt) there or below")
        checkpoint = latest
    out = args.out or checkpoint.parent / "evaluation"
    embeddings = None
    if not args.no_ray:
        import os

        from nrcc_scale.config_load import config_from_dict
        from nrcc_scale.evaluation.parallel_embed import embed_with_ray
        from nrcc_scale.ray_setup import init_ray

        try:
            state = read_state(checkpoint)
        except CheckpointError as err:
            raise ConfigError(str(err)) from None
        cfg = apply_overrides(config_from_dict(state.config), args.overrides)
        print(init_ray(cfg.ray), flush=True)
        n = len(build_data(cfg.data, seed=cfg.train.seed).evaluate)
        shards = args.shards or max(1, (os.cpu_count() or 1))
        embeddings = embed_with_ray(checkpoint, n, out, shards, cfg.eval.batch_size)
    metrics, table = evaluate_checkpoint(checkpoint, out, overrides=args.overrides, embeddings=embeddings)
    return metrics, table, out


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    args = build_parser().parse_args(argv)
    _check_overrides(args.overrides)
    metrics, table, out = _from_embeddings(args) if args.embeddings else _from_checkpoint(args)
    print()
    print(table)
    print("backends: " + ", ".join(f"{stage} {name}" for stage, name in metrics["backends"].items()))
    print(f"output directory: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
