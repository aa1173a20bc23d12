"""``build_data``: the run's data configuration -> the splits it needs (:class:`DataBundle`).

Parquet shards and object-storage archives are handled here (they work for any data set); everything else
is looked up by ``data.dataset`` in the one table of builders, :data:`nrcc_scale.data.catalog.BUILDERS`.
"""

from __future__ import annotations

from nrcc_scale.config import SHARD_FORMATS, DataConfig
from nrcc_scale.data.base import DataBundle, ImageSource
from nrcc_scale.data.catalog import BUILDERS
from nrcc_scale.data.unlabelled import strip_labels


def build_data(cfg: DataConfig, seed: int = 0) -> DataBundle:
    if cfg.format in SHARD_FORMATS:  # Parquet shards at data.root (python -m nrcc_scale.data shard)
        from nrcc_scale.data.parquet_shards import parquet_bundle

        return parquet_bundle(cfg.root, cfg.on_bad_file, cfg.holdout_fraction, seed)
    if "://" in cfg.root:  # a folder data set packed as one archive in object storage: staged per node
        from nrcc_scale.data.staging import stage_root_for_build

        cfg = stage_root_for_build(cfg)
    try:
        builder = BUILDERS[cfg.dataset]
    except KeyError:
        raise ValueError(f"data.dataset = {cfg.dataset!r}: no loader is registered for it; "
                         f"known: {', '.join(sorted(BUILDERS))}") from None
    bundle = builder(cfg, seed)
    if cfg.labels == "none":
        bundle = strip_labels(bundle)  # no-op for sources that are unlabelled already
    return bundle


def training_resolution(cfg: DataConfig, source: ImageSource) -> int:
    return cfg.resolution or source.native_resolution
