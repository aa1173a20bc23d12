"""Typed run configuration: dataclasses, YAML files, ``key=value`` overrides, validation.

Every number a run uses lives here, so the saved ``config.yaml`` reproduces the run. Configs compose:
the dataclass defaults are the bundled CPU-sized default (digits, BYOL+NRCC, a recipe that learns in a few
minutes on 2 cores); the papers' recipe is in ``configs/presets/paper.yaml`` and ``configs/datasets/``.
Each ``--config FILE``
(applied in order) and then each ``key=value`` override changes only the keys it names. A mistake is
reported before any work starts, as one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BACKBONES = (
    "resnet_tiny",  # CPU-sized timm ResNet (1 block per stage, widths 16-128): the bundled default
    "resnet18",
    "resnet34",
    "resnet50",
    "vit_tiny",
    "vit_small",
    "vit_base",
)
METHODS = ("infonce", "byol", "simsiam", "barlow_twins", "cueco")
NRCC_METHODS = ("infonce", "byol", "simsiam", "barlow_twins")
NEGATIVE_KINDS = ("sghmc", "hmc", "mc", "augment")
DATASETS = (
    "digits",
    "image_folder",
    "cifar10",
    "cifar100",
    "cifar20",
    "cifar10_lt",
    "cifar20_lt",
    "stl10",
    "imagenet10",
    "imagenet_dogs",
    "tinyimagenet",
    "imagenet1k",
)


class ConfigError(ValueError):
    """A configuration mistake, worded for the person who typed it."""


# ----------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """SimCLR augmentation (METHOD.md, Training defaults). Crop and flip happen per image in the loader;
    the photometric part runs on whole batches on the training device (FFCV has no such ops)."""

    crop_scale_min: float = 0.5  # SimCLR (the papers): 0.08; digits are 8 px, so a gentler crop by default
    crop_scale_max: float = 1.0
    flip_p: float = 0.0  # SimCLR: 0.5; a mirrored digit is another symbol
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float | None = None  # None: 0.5 for images of >= 96 px, else 0 (SimCLR)
    solarize_p: float = 0.0


#: data.format values that read Parquet shards at data.root (python -m nrcc_scale.data shard)
SHARD_FORMATS = ("parquet", "ray_data")

@dataclass
class DataConfig:
    dataset: str = "digits"
    root: str = ""  # data folder (unused by the bundled digits)
    resolution: int = 16  # training resolution in pixels (digits: 8 px upsampled); 0 = the data set's own
    loader: str = "auto"  # auto (ffcv when a .beton is given and ffcv imports) | torchvision | ffcv
    beton: str = ""  # FFCV .beton from `python -m nrcc_scale.data prepare`: a path, or s3:// gs:// abfs:// file://
    # auto (the data set's own files / data.beton) | parquet (Parquet shards at data.root, deterministic reader)
    # | ray_data (the same shards streamed by Ray Data: read + decode + crops in Ray Data tasks)
    format: str = "auto"
    shuffle_buffer: int = 1000  # ray_data: rows in each worker's seeded local shuffle buffer (0: none)
    cache_dir: str = ""  # node-local folder for staged remote files ("": $NRCC_CACHE_DIR or ~/.cache/nrcc_scale)
    cache_max_gb: float = 200.0  # evict least recently used staged files beyond this (0: no limit)
    loader_workers: int = 0  # data-loading processes per training worker
    on_bad_file: str = "fail"  # fail | skip: what to do with unreadable or corrupt images
    verify_files: str = "auto"  # auto | none | header | decode: how image-folder files are checked when indexed
    use_unlabeled: bool = False  # STL-10: add the 100,000 unlabelled images to the training split
    labels: str = "auto"  # auto (use labels where the data have them) | none (ignore them: label-free run)
    imbalance_ratio: float = 10.0  # long-tailed sets (cifar10_lt, cifar20_lt): largest / smallest class
    holdout_fraction: float = 0.2  # held-out split for data sets without a test split (digits, folders)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    backbone: str = "resnet_tiny"
    cifar_stem: bool | None = None  # None: 3x3 stride-1 stem without max-pool when resolution <= 64
    vit_patch_size: int | None = None  # None: chosen so the image is a 14x14-ish grid (4 px for 32 px)
    projector_hidden: int = 1024
    projector_dim: int = 256
    predictor_hidden: int = 1024
    # -- GPU (issue 10) --
    channels_last: bool | None = None  # None: on for convolutional backbones on CUDA (faster cuDNN kernels)
    sync_bn: bool | None = None  # SyncBatchNorm across workers; None: on for multi-GPU runs (stated in the log)


@dataclass
class SGHMCConfig:
    """Negative views x^c (METHOD.md, eqs 16-18, Algorithm 1). delta1 = friction, delta2 = step size,
    delta3 = noise scale, steps = zeta."""

    steps: int = 1
    delta1: float = 0.1
    delta2: float = 0.05
    delta3: float = 0.99
    grad_clip: float = 1.0  # element-wise clip of the potential's gradient
    potential_space: str = "backbone"  # backbone | projection: where h(.) in U(X) is taken
    potential_pairs: str = "batch"  # batch: all x^b_j of the batch; self: only j = i (literal eq 16)
    resolution: int = 0  # run the chain at this resolution (reference code: 32); 0 = training resolution
    momentum_update: str = "updated"  # updated: X += delta2 * p_new (METHOD.md); printed: uses the old p


@dataclass
class NRCCConfig:
    """The NRCC regularizer R_i = weight * [LSE_{j!=i}(<u_i, v^c_j>/T) - positive_weight * LSE_j(<u_i, v^b_j>/T)]."""

    enabled: bool = True
    weight: float = 0.1  # lambda
    temperature: float = 0.1  # tau
    positive_weight: float = 1.0  # w_pos (reference code: 0, repulsion only)
    exclude_self: bool = True  # drop j = i from the SGHMC sum (Algorithms 2-3)
    negatives: str = "sghmc"  # sghmc | hmc | mc | augment (Table 2, Table 8 ablations)
    negatives_network: str = "target"  # BYOL: target (paper 3.6.1) | online (reference code)
    anchor: str = "predictor"  # BYOL: predictor output (paper Fig. 5) | projector (reference code)
    symmetric: bool = True  # regularize both views (paper) or view a only (reference code)
    gather: bool = True  # negatives from all workers (paper) or local to each worker (reference code)
    sghmc: SGHMCConfig = field(default_factory=SGHMCConfig)


@dataclass
class CueCoConfig:
    queue_size: int = 16384
    num_centroids: int = 100
    temperature: float = 0.2
    beta1: float = 0.99
    beta2: float = 0.99
    weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 0.1])  # lambda_1..3
    variance_eps: float = 1e-6


@dataclass
class MethodConfig:
    name: str = "byol"
    temperature: float = 0.1  # InfoNCE tau
    ema_momentum: float = 0.99  # BYOL / CueCo target momentum m (paper: 0.996; 0.99 suits short runs)
    ema_cosine: bool = True  # increase m to 1 along a cosine over training (BYOL)
    barlow_lambda: float = 0.0051  # Barlow Twins off-diagonal weight
    nrcc: NRCCConfig = field(default_factory=NRCCConfig)
    cueco: CueCoConfig = field(default_factory=CueCoConfig)


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # sgd (the paper's) | adamw (the CPU demo's: learns in few steps) | lars
    base_lr: float = 0.002  # scaled by global batch / 256 (paper Appendix C: SGD, 0.05)
    momentum: float = 0.9
    weight_decay: float = 1e-4  # paper / reference code: 5e-4 with SGD
    predictor_lr_mult: float = 10.0
    warmup_epochs: float = 5.0
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak


@dataclass
class TrainConfig:
    epochs: int = 50  # the bundled default: fits in 5 minutes on 2 CPU cores
    batch_size: int = 128  # global, split across workers (paper: 256)
    num_workers: int = 2  # Ray Train workers (one process per GPU, or per CPU slot)
    cpus_per_worker: int = 1
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    # -- GPU (issue 10) --
    amp: str = "auto"  # auto (bf16 where the GPU has it, else fp16 + GradScaler; off on CPU) | off | bf16 | fp16
    compile: bool = False  # torch.compile the networks (CUDA; the first steps are slower while it compiles)
    checkpoint_every: int = 10  # epochs
    keep_checkpoints: int = 2
    monitor_every: int = 25  # epochs between kNN / std / clustering monitors; 0 = only at the end, -1 = never
    max_failures: int = 0  # Ray Train FailureConfig: restarts from the last checkpoint
    log_every: int = 10  # steps
    seed: int = 0
    deterministic: bool = False


@dataclass
class EvalConfig:
    enabled: bool = True
    features: str = "projector"  # projector | backbone: target encoder output used for clustering
    reducer: str = "umap"  # umap | tsne
    umap_backend: str = "auto"  # auto | cuml | umap-learn
    n_components: int = 3
    n_neighbors: int = 10
    min_dist: float = 0.0
    metric: str = "cosine"
    bandwidth: float | None = None  # GridShift cell size; None: automatic, from the data, no labels
    gridshift_max_iter: int = 100
    gridshift_backend: str = "auto"  # auto (torch on the GPU when there is one) | numpy | torch (issue 10)
    baselines: bool = True  # k-means with the true k, and UMAP + GridShift on raw pixels
    knn_k: int = 20
    knn_temperature: float = 0.07
    linear_eval: bool = True
    plots: bool = True
    batch_size: int = 512
    seed: int = 0
    # speed on CPU nodes and the baselines (issues 11, 17; cluster/knn.py, reduce.py, hdbscan.py explain them)
    # auto (measured rule) | faiss-exact | faiss-cells | faiss-ivf | faiss-hnsw | pynndescent | sklearn
    knn_backend: str = "auto"
    knn_min_recall: float = 0.98  # graph recall vs exact search on 1000 rows; "auto" rebuilds with faiss below it
    deterministic: bool = False  # true: bit-for-bit UMAP on one core; false: all cores, the seed fixes the init
    umap_init: str = "auto"  # auto (spectral up to 1e5 rows, pca beyond) | spectral | pca
    # UMAP SGD epochs; 0 = umap-learn's own rule (500 up to 10^4 rows, 200 beyond). Fewer is proportionally
    # faster and fragments clusters a little (measured in cluster/reduce.py's docstring)
    umap_epochs: int = 0
    hdbscan_min_cluster_size: int = 0  # 0 = max(10, n // 2000) on the clustered points
    baseline_sample: int = 20_000  # above this many points, baselines and plots use a fixed random subsample
    progress: bool = True  # bars with rate and ETA on long stages (>= 50k points), a line per stage


@dataclass
class RayConfig:
    address: str = ""  # "" = connect to RAY_ADDRESS if set (ray job), else start a local Ray on loopback
    num_cpus: int | None = None  # for a local Ray; None = all cores
    # data.format=ray_data and a local Ray: extra logical CPUs for Ray Data's read/decode tasks, which
    # would otherwise wait forever behind training workers that hold every CPU
    data_cpus: int = 2


@dataclass
class Config:
    name: str = ""  # run name; "" = <method>[_nrcc]_<dataset>_<timestamp>
    storage_path: str = "~/nrcc_scale_runs"  # local folder or a cloud URI (s3://, gs://)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    # -- conveniences ---------------------------------------------------------------------------------
    @property
    def uses_nrcc(self) -> bool:
        return self.method.nrcc.enabled and self.method.name in NRCC_METHODS

    def default_name(self) -> str:
        import time

        nrcc = "_nrcc" if self.uses_nrcc else ""
        return f"{self.method.name}{nrcc}_{self.data.dataset}_{time.strftime('%Y%m%d-%H%M%S')}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------
# Loading and overriding
# ----------------------------------------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


#: YAML 1.1 (PyYAML) reads ``1e-3`` and ``5e-4`` as strings (it wants ``1.0e-3``); numeric keys accept them.
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
#: String keys that also take a YAML boolean (``amp: off`` is read as False).
_BOOLEAN_ALIASES: dict[str, dict[bool, str]] = {"train.amp": {False: "off", True: "auto"}}


def _number(value: Any) -> Any:
    """A string spelling a number (``1e-3``, ``5E4``, ``-2.5``) as a float; anything else unchanged."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value.strip())
    return value


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotated type ``tp``; allow the conversions YAML makes natural
    (an int where a float is expected). Raise ConfigError naming the key otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{key} = {value!r}: expected {_type_name(tp)}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {value!r}: expected a list of {_type_name(item_tp)}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} = {value!r}: expected true or false")
    if tp in (int, float):
        value = _number(value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} = {value!r}: expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} = {value!r}: expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. name=123
        raise ConfigError(f"{key} = {value!r}: expected a string")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def apply_mapping(obj: Any, mapping: dict[str, Any], prefix: str = "") -> None:
    """Write a (possibly nested) mapping into a dataclass instance, checking keys and types."""
    if not isinstance(mapping, dict):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: expected a mapping of keys, got {mapping!r}")
    hints = _field_types(type(obj))
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if key not in hints:
            allowed = ", ".join(sorted(hints))
            raise ConfigError(f"unknown key '{path}': allowed here are {allowed}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            apply_mapping(current, value, f"{path}.")
        else:
            if isinstance(value, bool) and path in _BOOLEAN_ALIASES:
                value = _BOOLEAN_ALIASES[path][value]
            setattr(obj, key, _coerce(path, value, hints[key]))


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b.c=value`` -> (``a.b.c``, value parsed as YAML so numbers, booleans and null work)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. method.nrcc.weight=0.5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}': the key before '=' is empty")
    import yaml  # here, not at the top: `benchmarks/gpu_check.py` builds configs without PyYAML installed

    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of keys")
    return data


def load_config(
    files: list[str | Path] | None = None, overrides: list[str] | None = None, validate: bool = True
) -> Config:
    """Defaults, then each YAML file in order, then each ``key=value`` override; then validate."""
    cfg = Config()
    for path in files or []:
        data = read_yaml(path)
        try:
            apply_mapping(cfg, data, "")
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    return apply_overrides(cfg, list(overrides or []), validate)


def apply_overrides(cfg: Config, overrides: list[str], validate: bool = True) -> Config:
    """Apply ``key=value`` overrides to an existing config (e.g. one read from a checkpoint)."""
    for text in overrides:
        key, value = parse_override(text)
        apply_mapping(cfg, _nest(key, value), "")
    if validate:
        validate_config(cfg)
    return cfg


def config_from_dict(data: dict[str, Any], validate: bool = True) -> Config:
    cfg = Config()
    apply_mapping(cfg, data, "")
    if validate:
        validate_config(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    import yaml

    from nrcc_scale.utils.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r}: allowed values are {', '.join(allowed)}")


def _range(key: str, value: float | None, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False) -> None:
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
    """Range and choice checks that the types alone cannot express."""
    d, m, me, o, t, e = cfg.data, cfg.model, cfg.method, cfg.optim, cfg.train, cfg.eval
    _choice("data.dataset", d.dataset, DATASETS)
    _choice("data.loader", d.loader, ("auto", "torchvision", "ffcv"))
    _choice("data.on_bad_file", d.on_bad_file, ("fail", "skip"))
    _choice("data.format", d.format, ("auto", "parquet", "ray_data"))
    _range("data.cache_max_gb", d.cache_max_gb, 0.0)
    _range("data.shuffle_buffer", d.shuffle_buffer, 0)
    _range("ray.data_cpus", cfg.ray.data_cpus, 0)
    if d.format in SHARD_FORMATS and not d.root:
        raise ConfigError(f"data.root is empty: data.format = {d.format!r} needs the Parquet shards' location "
                          "(written by `python -m nrcc_scale.data shard --out URI`)")
    _choice("data.verify_files", d.verify_files, ("auto", "none", "header", "decode"))
    _choice("data.labels", d.labels, ("auto", "none"))
    _range("data.resolution", d.resolution, 0)
    _range("data.loader_workers", d.loader_workers, 0)
    _range("data.imbalance_ratio", d.imbalance_ratio, 1.0)
    _range("data.holdout_fraction", d.holdout_fraction, 0.0, 1.0, hi_open=True)
    if d.dataset == "image_folder" and not d.root:
        raise ConfigError("data.root is empty: data.dataset = 'image_folder' needs the folder of class folders")
    a = d.augment
    _range("data.augment.crop_scale_min", a.crop_scale_min, 0.0, 1.0, lo_open=True)
    _range("data.augment.crop_scale_max", a.crop_scale_max, a.crop_scale_min, 1.0)
    for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
        _range(f"data.augment.{name}", getattr(a, name), 0.0, 1.0)
    for name in ("brightness", "contrast", "saturation"):
        _range(f"data.augment.{name}", getattr(a, name), 0.0)
    _range("data.augment.hue", a.hue, 0.0, 0.5)

    _choice("model.backbone", m.backbone, BACKBONES)
    for name in ("projector_hidden", "projector_dim", "predictor_hidden"):
        _range(f"model.{name}", getattr(m, name), 1)
    _range("model.vit_patch_size", m.vit_patch_size, 1)

    _choice("method.name", me.name, METHODS)
    _range("method.temperature", me.temperature, 0.0, lo_open=True)
    _range("method.ema_momentum", me.ema_momentum, 0.0, 1.0)
    _range("method.barlow_lambda", me.barlow_lambda, 0.0)
    n = me.nrcc
    _range("method.nrcc.weight", n.weight, 0.0)
    _range("method.nrcc.temperature", n.temperature, 0.0, lo_open=True)
    _range("method.nrcc.positive_weight", n.positive_weight, 0.0)
    _choice("method.nrcc.negatives", n.negatives, NEGATIVE_KINDS)
    _choice("method.nrcc.negatives_network", n.negatives_network, ("target", "online"))
    _choice("method.nrcc.anchor", n.anchor, ("predictor", "projector"))
    s = n.sghmc
    _range("method.nrcc.sghmc.steps", s.steps, 1)
    _range("method.nrcc.sghmc.delta1", s.delta1, 0.0, 1.0)
    _range("method.nrcc.sghmc.delta2", s.delta2, 0.0)
    _range("method.nrcc.sghmc.delta3", s.delta3, 0.0)
    _range("method.nrcc.sghmc.grad_clip", s.grad_clip, 0.0, lo_open=True)
    _choice("method.nrcc.sghmc.potential_space", s.potential_space, ("backbone", "projection"))
    _choice("method.nrcc.sghmc.potential_pairs", s.potential_pairs, ("batch", "self"))
    _choice("method.nrcc.sghmc.momentum_update", s.momentum_update, ("updated", "printed"))
    _range("method.nrcc.sghmc.resolution", s.resolution, 0)
    c = me.cueco
    _range("method.cueco.queue_size", c.queue_size, 0)
    _range("method.cueco.num_centroids", c.num_centroids, 2)
    _range("method.cueco.temperature", c.temperature, 0.0, lo_open=True)
    _range("method.cueco.beta1", c.beta1, 0.0, 1.0)
    _range("method.cueco.beta2", c.beta2, 0.0, 1.0)
    _range("method.cueco.variance_eps", c.variance_eps, 0.0, lo_open=True)
    if len(c.weights) != 3:
        raise ConfigError(f"method.cueco.weights = {c.weights!r}: expected three weights [l1, l2, l3]")
    for i, w in enumerate(c.weights):
        _range(f"method.cueco.weights[{i}]", w, 0.0)

    _choice("optim.optimizer", o.optimizer, ("sgd", "adamw", "lars"))
    _range("optim.base_lr", o.base_lr, 0.0, lo_open=True)
    _range("optim.momentum", o.momentum, 0.0, 1.0, hi_open=True)
    _range("optim.weight_decay", o.weight_decay, 0.0)
    _range("optim.predictor_lr_mult", o.predictor_lr_mult, 0.0, lo_open=True)
    _range("optim.warmup_epochs", o.warmup_epochs, 0.0)
    _range("optim.min_lr_ratio", o.min_lr_ratio, 0.0, 1.0)

    _range("train.epochs", t.epochs, 1)
    _range("train.batch_size", t.batch_size, 2)
    _range("train.num_workers", t.num_workers, 1)
    _range("train.cpus_per_worker", t.cpus_per_worker, 1)
    if t.batch_size % t.num_workers:
        raise ConfigError(
            f"train.batch_size = {t.batch_size}: must be divisible by train.num_workers = {t.num_workers}"
        )
    if t.batch_size // t.num_workers < 2:
        raise ConfigError(f"train.batch_size = {t.batch_size}: needs at least 2 images per worker")
    _choice("train.amp", t.amp, ("auto", "off", "bf16", "fp16"))
    _range("train.checkpoint_every", t.checkpoint_every, 1)
    _range("train.keep_checkpoints", t.keep_checkpoints, 1)
    _range("train.monitor_every", t.monitor_every, -1)
    _range("train.max_failures", t.max_failures, -1)
    _range("train.log_every", t.log_every, 1)

    _choice("eval.features", e.features, ("projector", "backbone"))
    _choice("eval.reducer", e.reducer, ("umap", "tsne"))
    _choice("eval.umap_backend", e.umap_backend, ("auto", "cuml", "umap-learn"))
    _choice("eval.gridshift_backend", e.gridshift_backend, ("auto", "numpy", "torch"))
    _range("eval.n_components", e.n_components, 1, 8)
    _range("eval.n_neighbors", e.n_neighbors, 2)
    _range("eval.min_dist", e.min_dist, 0.0)
    _range("eval.bandwidth", e.bandwidth, 0.0, lo_open=True)
    _range("eval.gridshift_max_iter", e.gridshift_max_iter, 1)
    _range("eval.knn_k", e.knn_k, 1)
    _range("eval.knn_temperature", e.knn_temperature, 0.0, lo_open=True)
    _range("eval.batch_size", e.batch_size, 1)
    _choice("eval.knn_backend", e.knn_backend, ("auto", "faiss-exact", "faiss-cells", "faiss-ivf", "faiss-hnsw",
                                                "pynndescent", "sklearn"))
    _range("eval.knn_min_recall", e.knn_min_recall, 0.0, 1.0)
    _choice("eval.umap_init", e.umap_init, ("auto", "spectral", "pca"))
    _range("eval.umap_epochs", e.umap_epochs, 0)
    _range("eval.hdbscan_min_cluster_size", e.hdbscan_min_cluster_size, 0)
    _range("eval.baseline_sample", e.baseline_sample, 1000)
    if not cfg.storage_path:
        raise ConfigError("storage_path is empty: give a local folder or a cloud URI (s3://..., gs://...)")
    if "/" in cfg.name or cfg.name.startswith("."):
        raise ConfigError(f"name = {cfg.name!r}: a run name is one folder name (no '/', not starting with '.')")
