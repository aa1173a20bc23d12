"""Typed run configuration: the keys, their types and defaults (dataclasses), and the YAML a run saves.

Every number a run uses lives here, so the saved ``config.yaml`` reproduces the run. Configs compose:
the dataclass defaults are the bundled CPU-sized default (digits, BYOL+NRCC, a recipe that learns in a few
minutes on 2 cores); the papers' recipe is in ``configs/presets/paper.yaml`` and ``configs/datasets/``.
Each ``--config FILE`` (applied in order) and then each ``key=value`` override changes only the keys it
names. A mistake is reported before any work starts, as one line naming the key, the value and what is
allowed.

Reading a config takes three more modules, split by what each needs, so that the registries (methods,
backbones, data sets), which sit below the checks, import only the dataclasses here:

* ``nrcc_scale.config_parse``: YAML files and ``key=value`` text into typed values (unknown keys, wrong types);
* ``nrcc_scale.config_checks``: ranges and choices, and the names each registry knows (``validate_config``);
* ``nrcc_scale.config_load``: ``load_config`` and friends, defaults -> files -> overrides -> checks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Methods that take the NRCC regularizer (CueCo has its own cluster terms instead).
NRCC_METHODS = ("infonce", "byol", "simsiam", "barlow_twins")
NEGATIVE_KINDS = ("sghmc", "hmc", "mc", "augment")


class ConfigError(ValueError):
    """A configuration mistake, worded for the person who typed it."""


# ----------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """SimCLR augmentation (docs/spec/METHOD.md, Training defaults). Crop and flip happen per image in the loader;
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
    """Negative views x^c (docs/spec/METHOD.md, eqs 16-18, Algorithm 1). delta1 = friction, delta2 = step size,
    delta3 = noise scale, steps = zeta."""

    steps: int = 1
    delta1: float = 0.1
    delta2: float = 0.05
    delta3: float = 0.99
    grad_clip: float = 1.0  # element-wise clip of the potential's gradient
    potential_space: str = "backbone"  # backbone | projection: where h(.) in U(X) is taken
    potential_pairs: str = "batch"  # batch: all x^b_j of the batch; self: only j = i (literal eq 16)
    resolution: int = 0  # run the chain at this resolution (reference code: 32); 0 = training resolution
    momentum_update: str = "updated"  # updated: X += delta2 * p_new (docs/spec/METHOD.md); printed: uses the old p


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
    knn_min_recall: float = 0.98  # graph recall vs exact search on 1000 rows; "auto" rebuilds below it
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


def save_config(cfg: Config, path: str | Path) -> None:
    import yaml  # here, not at the top: `benchmarks/gpu_check.py` builds configs without PyYAML installed

    from nrcc_scale.utils.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
