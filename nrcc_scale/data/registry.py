"""Data set names -> the splits a run needs (:class:`DataBundle`).

Each builder reads one on-disk format; the names match ``configs/datasets/*.yaml`` and the papers.
"""

from __future__ import annotations

from collections.abc import Callable

from nrcc_scale.config import SHARD_FORMATS, DataConfig
from nrcc_scale.data.base import DataBundle, ImageSource, SubsetSource, stratified_holdout
from nrcc_scale.data.digits import load_digits_source


def holdout_bundle(source: ImageSource, fraction: float, seed: int) -> DataBundle:
    """For sets without a test split: train and fit probes on a stratified share, score probes on the
    held-out rest, and cluster the whole set (as the paper clusters train + test)."""
    keep, held = stratified_holdout(source.labels, fraction, seed)
    train = SubsetSource(source, keep, name=f"{source.name}[train]")
    test = SubsetSource(source, held, name=f"{source.name}[holdout]")
    return DataBundle(train=train, evaluate=source, probe_train=train, probe_test=test)


def _digits(cfg: DataConfig, seed: int) -> DataBundle:
    return holdout_bundle(load_digits_source(), cfg.holdout_fraction, seed)


# name -> builder; the formats of the papers' data sets register themselves in ``nrcc_scale.data.formats``
BUILDERS: dict[str, Callable[[DataConfig, int], DataBundle]] = {"digits": _digits}


def build_data(cfg: DataConfig, seed: int = 0) -> DataBundle:
    if cfg.format in SHARD_FORMATS:  # Parquet shards at data.root (python -m nrcc_scale.data shard)
        from nrcc_scale.data.parquet_shards import parquet_bundle

        return parquet_bundle(cfg.root, cfg.on_bad_file, cfg.holdout_fraction, seed)
    if "://" in cfg.root:  # a folder data set packed as one archive in object storage: staged per node
        from nrcc_scale.data.staging import stage_root_for_build

        cfg = stage_root_for_build(cfg)
    if cfg.dataset not in BUILDERS:
        _register_formats()
    try:
        builder = BUILDERS[cfg.dataset]
    except KeyError:
        raise ValueError(f"data.dataset = {cfg.dataset!r}: no loader is registered for it; "
                         f"known: {', '.join(sorted(BUILDERS))}") from None
    bundle = builder(cfg, seed)
    if cfg.labels == "none":
        from nrcc_scale.data.unlabelled import strip_labels

        bundle = strip_labels(bundle)  # no-op for sources that are unlabelled already
    return bundle


def _register_formats() -> None:
    """Import the on-disk format readers lazily (they are not needed for the bundled default)."""
    import importlib

    try:
        importlib.import_module("nrcc_scale.data.formats")
    except ModuleNotFoundError as err:
        if err.name != "nrcc_scale.data.formats":
            raise


def training_resolution(cfg: DataConfig, source: ImageSource) -> int:
    return cfg.resolution or source.native_resolution
