"""Checking a run config: ranges, choices, and the names each registry knows, before any work starts.

The allowed names of ``method.name``, ``model.backbone`` and ``data.dataset`` are read from the registries
that build them (``METHOD_CLASSES``, the backbone aliases plus timm's model list, the data set builders), so
each list exists once. Every mistake is one :class:`nrcc_scale.config.ConfigError` line naming the key, the
value and what is allowed.
"""

from __future__ import annotations

import math
from typing import Any

from nrcc_scale.config import NEGATIVE_KINDS, SHARD_FORMATS, Config, ConfigError

# The registries are imported when a config is checked, not when this module is: they pull in torch and timm,
# which the command lines' own argument errors (and `python -m nrcc_scale.evaluate --embeddings`) do not need.

__all__ = ["check_choice", "check_range", "dataset_names", "method_names", "validate_config"]


def method_names() -> tuple[str, ...]:
    """The ``method.name`` values: the methods registry (``nrcc_scale.methods.METHOD_CLASSES``)."""
    from nrcc_scale.methods import METHOD_CLASSES

    return tuple(METHOD_CLASSES)


def dataset_names() -> tuple[str, ...]:
    """The ``data.dataset`` values: the one table of data sets (``nrcc_scale.data.catalog``)."""
    from nrcc_scale.data.catalog import dataset_names as catalog_names

    return catalog_names()


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    """``value`` is one of ``allowed``, else one line naming the key, the value and the allowed values."""
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r}: allowed values are {', '.join(allowed)}")


def check_range(key: str, value: float | None, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """``value`` (None: unset, passes) is finite and in [lo, hi] (or open ends), else one line saying so."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} = {value!r}: must be a finite number")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ConfigError(f"{key} = {value!r}: must be in {left}{lo_s}, {hi_s}{right}")


def validate_config(cfg: Config) -> None:
    """Range, choice and registry-name checks that the types alone cannot express."""
    d, m, me, o, t, e = cfg.data, cfg.model, cfg.method, cfg.optim, cfg.train, cfg.eval
    check_choice("data.dataset", d.dataset, dataset_names())
    check_choice("data.loader", d.loader, ("auto", "torchvision", "ffcv"))
    check_choice("data.on_bad_file", d.on_bad_file, ("fail", "skip"))
    check_choice("data.format", d.format, ("auto", "parquet", "ray_data"))
    check_range("data.cache_max_gb", d.cache_max_gb, 0.0)
    check_range("data.shuffle_buffer", d.shuffle_buffer, 0)
    check_range("ray.data_cpus", cfg.ray.data_cpus, 0)
    if d.format in SHARD_FORMATS and not d.root:
        raise ConfigError(f"data.root is empty: data.format = {d.format!r} needs the Parquet shards' location "
                          "(written by `python -m nrcc_scale.data shard --out URI`)")
    check_choice("data.verify_files", d.verify_files, ("auto", "none", "header", "decode"))
    check_choice("data.labels", d.labels, ("auto", "none"))
    check_range("data.resolution", d.resolution, 0)
    check_range("data.loader_workers", d.loader_workers, 0)
    check_range("data.imbalance_ratio", d.imbalance_ratio, 1.0)
    check_range("data.holdout_fraction", d.holdout_fraction, 0.0, 1.0, hi_open=True)
    if d.dataset == "image_folder" and not d.root:
        raise ConfigError("data.root is empty: data.dataset = 'image_folder' needs the folder of class folders")
    a = d.augment
    check_range("data.augment.crop_scale_min", a.crop_scale_min, 0.0, 1.0, lo_open=True)
    check_range("data.augment.crop_scale_max", a.crop_scale_max, a.crop_scale_min, 1.0)
    for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
        check_range(f"data.augment.{name}", getattr(a, name), 0.0, 1.0)
    for name in ("brightness", "contrast", "saturation"):
        check_range(f"data.augment.{name}", getattr(a, name), 0.0)
    check_range("data.augment.hue", a.hue, 0.0, 0.5)

    from nrcc_scale.models.backbones import CIFAR_STEM_FAMILIES, backbone_family, check_backbone_name

    check_backbone_name(m.backbone)  # any timm model name, or an alias; close matches when misspelt
    if m.cifar_stem and backbone_family(m.backbone) not in CIFAR_STEM_FAMILIES:
        raise ConfigError(f"model.cifar_stem = true: no CIFAR stem is defined for {m.backbone} (ResNet and "
                          "ConvNeXt families have one); set it to false or leave it unset")
    for name in ("projector_hidden", "projector_dim", "predictor_hidden"):
        check_range(f"model.{name}", getattr(m, name), 1)
    check_range("model.vit_patch_size", m.vit_patch_size, 1)

    check_choice("method.name", me.name, method_names())
    check_range("method.temperature", me.temperature, 0.0, lo_open=True)
    check_range("method.ema_momentum", me.ema_momentum, 0.0, 1.0)
    check_range("method.barlow_lambda", me.barlow_lambda, 0.0)
    n = me.nrcc
    check_range("method.nrcc.weight", n.weight, 0.0)
    check_range("method.nrcc.temperature", n.temperature, 0.0, lo_open=True)
    check_range("method.nrcc.positive_weight", n.positive_weight, 0.0)
    check_choice("method.nrcc.negatives", n.negatives, NEGATIVE_KINDS)
    check_choice("method.nrcc.negatives_network", n.negatives_network, ("target", "online"))
    check_choice("method.nrcc.anchor", n.anchor, ("predictor", "projector"))
    s = n.sghmc
    check_range("method.nrcc.sghmc.steps", s.steps, 1)
    check_range("method.nrcc.sghmc.delta1", s.delta1, 0.0, 1.0)
    check_range("method.nrcc.sghmc.delta2", s.delta2, 0.0)
    check_range("method.nrcc.sghmc.delta3", s.delta3, 0.0)
    check_range("method.nrcc.sghmc.grad_clip", s.grad_clip, 0.0, lo_open=True)
    check_choice("method.nrcc.sghmc.potential_space", s.potential_space, ("backbone", "projection"))
    check_choice("method.nrcc.sghmc.potential_pairs", s.potential_pairs, ("batch", "self"))
    check_choice("method.nrcc.sghmc.momentum_update", s.momentum_update, ("updated", "printed"))
    check_range("method.nrcc.sghmc.resolution", s.resolution, 0)
    c = me.cueco
    check_range("method.cueco.queue_size", c.queue_size, 0)
    check_range("method.cueco.num_centroids", c.num_centroids, 2)
    check_range("method.cueco.temperature", c.temperature, 0.0, lo_open=True)
    check_range("method.cueco.beta1", c.beta1, 0.0, 1.0)
    check_range("method.cueco.beta2", c.beta2, 0.0, 1.0)
    check_range("method.cueco.variance_eps", c.variance_eps, 0.0, lo_open=True)
    if len(c.weights) != 3:
        raise ConfigError(f"method.cueco.weights = {c.weights!r}: expected three weights [l1, l2, l3]")
    for i, w in enumerate(c.weights):
        check_range(f"method.cueco.weights[{i}]", w, 0.0)

    check_choice("optim.optimizer", o.optimizer, ("sgd", "adamw", "lars"))
    check_range("optim.base_lr", o.base_lr, 0.0, lo_open=True)
    check_range("optim.momentum", o.momentum, 0.0, 1.0, hi_open=True)
    check_range("optim.weight_decay", o.weight_decay, 0.0)
    check_range("optim.predictor_lr_mult", o.predictor_lr_mult, 0.0, lo_open=True)
    check_range("optim.warmup_epochs", o.warmup_epochs, 0.0)
    check_range("optim.min_lr_ratio", o.min_lr_ratio, 0.0, 1.0)

    check_range("train.epochs", t.epochs, 1)
    check_range("train.batch_size", t.batch_size, 2)
    check_range("train.num_workers", t.num_workers, 1)
    check_range("train.cpus_per_worker", t.cpus_per_worker, 1)
    if t.batch_size % t.num_workers:
        raise ConfigError(
            f"train.batch_size = {t.batch_size}: must be divisible by train.num_workers = {t.num_workers}"
        )
    if t.batch_size // t.num_workers < 2:
        raise ConfigError(f"train.batch_size = {t.batch_size}: needs at least 2 images per worker")
    check_choice("train.amp", t.amp, ("auto", "off", "bf16", "fp16"))
    check_range("train.checkpoint_every", t.checkpoint_every, 1)
    check_range("train.keep_checkpoints", t.keep_checkpoints, 1)
    check_range("train.monitor_every", t.monitor_every, -1)
    check_range("train.max_failures", t.max_failures, -1)
    check_range("train.log_every", t.log_every, 1)

    check_choice("eval.features", e.features, ("projector", "backbone"))
    check_choice("eval.reducer", e.reducer, ("umap", "tsne"))
    check_choice("eval.umap_backend", e.umap_backend, ("auto", "cuml", "umap-learn"))
    check_choice("eval.gridshift_backend", e.gridshift_backend, ("auto", "numpy", "torch"))
    check_range("eval.n_components", e.n_components, 1, 8)
    check_range("eval.n_neighbors", e.n_neighbors, 2)
    check_range("eval.min_dist", e.min_dist, 0.0)
    check_range("eval.bandwidth", e.bandwidth, 0.0, lo_open=True)
    check_range("eval.gridshift_max_iter", e.gridshift_max_iter, 1)
    check_range("eval.knn_k", e.knn_k, 1)
    check_range("eval.knn_temperature", e.knn_temperature, 0.0, lo_open=True)
    check_range("eval.batch_size", e.batch_size, 1)
    from nrcc_scale.cluster.knn import GRAPH_BUILDERS
    from nrcc_scale.cluster.reduce import INITS

    check_choice("eval.knn_backend", e.knn_backend, ("auto", *GRAPH_BUILDERS))
    check_range("eval.knn_min_recall", e.knn_min_recall, 0.0, 1.0)
    check_choice("eval.umap_init", e.umap_init, INITS)
    check_range("eval.umap_epochs", e.umap_epochs, 0)
    check_range("eval.hdbscan_min_cluster_size", e.hdbscan_min_cluster_size, 0)
    check_range("eval.baseline_sample", e.baseline_sample, 1000)
    if not cfg.storage_path:
        raise ConfigError("storage_path is empty: give a local folder or a cloud URI (s3://..., gs://...)")
    if "/" in cfg.name or cfg.name.startswith("."):
        raise ConfigError(f"name = {cfg.name!r}: a run name is one folder name (no '/', not starting with '.')")
