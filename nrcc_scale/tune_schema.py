"""The sweep file of ``python -m nrcc_scale.tune``: its schema, its checks and each trial's training config.

Ray-free: a sweep file is read and checked here (sections, domains, settings, and every probed value of the
search space through the training config's own checks) before Ray starts, so a mistake is one line. The
format is described in ``nrcc_scale.tune``; the Ray Tune objects built from a :class:`Sweep` are in
``nrcc_scale.tune_ray``, the results table in ``nrcc_scale.tune_results``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nrcc_scale.config import Config, ConfigError
from nrcc_scale.config_checks import check_choice, validate_config
from nrcc_scale.config_load import config_from_dict, load_config
from nrcc_scale.config_parse import apply_mapping, nest_key, parse_override, read_yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = "runs"
RESULTS_CSV = "results.csv"
BEST_CONFIG = "best_config.yaml"
SWEEP_FILE = "sweep.yaml"
#: Metrics the training loop reports only on monitor epochs (``train.monitor_every``).
MONITOR_METRICS = ("knn_acc", "global_std", "monitor_nmi", "monitor_acc", "monitor_ari", "monitor_clusters",
                   # label-free monitors (nrcc_scale.evaluation.monitor.MONITORED_LABEL_FREE): ASHA without labels
                   "monitor_rankme", "monitor_stability", "monitor_silhouette", "monitor_cluster_size_cv",
                   "monitor_singleton_fraction")
#: Final scores that need labels, and those that do not (nrcc_scale.evaluation.label_free).
LABELLED_METRICS = ("nmi", "acc", "ari", "ami", "knn_acc", "linear_acc", "monitor_nmi", "monitor_acc", "monitor_ari")
LABEL_FREE_METRICS = ("rankme", "stability", "silhouette", "trustworthiness", "num_clusters", "cluster_size_cv",
                      "largest_cluster_fraction", "singleton_fraction", "global_std")
#: What tune.metric and tune.scheduler.metric may name.
KNOWN_METRICS = tuple(dict.fromkeys(LABELLED_METRICS + LABEL_FREE_METRICS + MONITOR_METRICS
                                    + ("loss", "loss_base", "loss_nrcc")))
DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "quniform", "randint")



@dataclass
class SchedulerSettings:
    type: str = "none"  # none | asha
    metric: str | None = None  # per-epoch metric ASHA compares; None: tune.metric
    mode: str | None = None  # None: tune.mode
    grace_period: int = 1  # epochs before a trial can be stopped
    reduction_factor: float = 3.0


@dataclass
class ResourceSettings:
    """Each trial's Ray Train workers; None keeps the base config's ``train.*`` value."""

    num_workers: int | None = None
    cpus_per_worker: int | None = None
    use_gpu: bool | None = None
    driver_memory_gb: float = 1.0  # Ray memory resource the trial driver reserves (it runs the evaluation)


@dataclass
class TuneSettings:
    name: str = ""  # "" = the sweep file's name
    storage_path: str = "~/nrcc_scale_runs/tune"
    metric: str = "nmi"
    mode: str = "max"  # max | min
    num_samples: int = 1  # samples per grid point (random search: the number of trials)
    max_concurrent_trials: int | None = None  # None: as many as the cluster's CPUs/GPUs fit
    evaluate: bool = True  # evaluate each finished trial's checkpoint (clustering + kNN scores)
    max_failures: int = 0  # Tune-level retries of a failed trial (Ray Train retries come first)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    resources: ResourceSettings = field(default_factory=ResourceSettings)


@dataclass
class Sweep:
    """A resolved sweep: the base training config, the search space and the settings."""

    base: Config
    search_space: dict[str, Any]
    settings: TuneSettings
    source: str = ""

    @property
    def path(self) -> Path:
        return Path(self.settings.storage_path).expanduser().resolve() / self.settings.name

    def max_epochs(self) -> int:
        """The most epochs any trial can run (ASHA's ``max_t``; train.epochs may itself be searched)."""
        spec = self.search_space.get("train.epochs")
        return max(int(v) for v in probe_values(spec)) if spec is not None else self.base.train.epochs

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "search_space": self.search_space, "tune": asdict(self.settings),
                "base": self.base.to_dict()}


def _resolve_config_path(name: str, sweep_file: Path) -> Path:
    """A base config file: absolute, or relative to the current directory, the repository or the sweep file."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    for root in (Path.cwd(), REPO_ROOT, sweep_file.parent):
        if (root / path).is_file():
            return root / path
    raise ConfigError(f"{sweep_file}: base config {name} not found (relative to the current directory, "
                      f"{REPO_ROOT} or {sweep_file.parent})")


def _check_domain(key: str, spec: Any) -> None:
    if not isinstance(spec, dict):
        return  # a fixed value
    if len(spec) != 1 or next(iter(spec)) not in DOMAIN_KINDS:
        raise ConfigError(f"search_space.{key} = {spec!r}: expected one of {', '.join(DOMAIN_KINDS)}, "
                          f"e.g. {{grid: [0.1, 1, 10]}} or {{loguniform: [1e-3, 1e-1]}}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"search_space.{key}.{kind} = {args!r}: expected a non-empty list")
    if kind in ("uniform", "loguniform", "randint", "quniform"):
        want = 3 if kind == "quniform" else 2
        if len(args) != want or not all(isinstance(a, (int, float)) for a in args) or not args[0] < args[1]:
            raise ConfigError(f"search_space.{key}.{kind} = {args!r}: expected [low, high"
                              f"{', q' if kind == 'quniform' else ''}] with low < high")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"search_space.{key}.loguniform = {args!r}: low must be > 0")


def probe_values(spec: Any) -> list[Any]:
    """Values of a domain to try on the base config, so a bad key or value fails before any trial runs."""
    if not isinstance(spec, dict):
        return [spec]
    kind, args = next(iter(spec.items()))
    if kind in ("grid", "choice"):
        return list(args)
    if kind == "randint":
        return [args[0], args[1] - 1]
    return [args[0], args[1]]


def _plain(value: Any) -> Any:
    """A Python value for a Tune sample (numpy scalars from Tune's samplers become int/float/bool/str)."""
    return value.item() if hasattr(value, "item") else value


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> Config:
    """The training config of one trial: the base with the sampled values written in (each dotted key as a
    nested mapping, checked key by key like a config file), validated."""
    cfg = config_from_dict(base, validate=False)
    for key, value in sorted(params.items()):
        apply_mapping(cfg, nest_key(key, _plain(value)), "")
    validate_config(cfg)
    return cfg


def load_sweep(path: str | Path, extra: Sequence[str] = ()) -> Sweep:
    """Read a sweep file plus command-line ``key=value`` extras; check everything a trial will need."""
    path = Path(path)
    data = read_yaml(path)
    unknown = set(data) - {"base", "search_space", "tune"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}; allowed: base, search_space, tune")
    base_spec = data.get("base") or {}
    if not isinstance(base_spec, dict) or set(base_spec) - {"configs", "overrides"}:
        raise ConfigError(f"{path}: base must be a mapping with 'configs' and/or 'overrides'")
    settings = TuneSettings()
    apply_mapping(settings, data.get("tune") or {}, "tune.")
    train_overrides = [str(o) for o in base_spec.get("overrides") or []]
    for text in extra:
        key, value = parse_override(text)
        if key.startswith("tune."):
            apply_mapping(settings, nest_key(key.removeprefix("tune."), value), "tune.")
        else:
            train_overrides.append(text)
    files = [_resolve_config_path(str(f), path) for f in base_spec.get("configs") or []]
    base = load_config(files, train_overrides, validate=False)
    # tune.resources: each trial's Ray Train workers, written over the base's train.* keys
    res = settings.resources
    workers = {key: getattr(res, key) for key in ("num_workers", "cpus_per_worker", "use_gpu")}
    apply_mapping(base, {"train": {k: v for k, v in workers.items() if v is not None}}, "")
    validate_config(base)
    settings.name = settings.name or path.stem
    _validate_settings(settings, base)

    space = data.get("search_space") or {}
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{path}: search_space is empty; give at least one key, e.g. "
                          f"method.nrcc.weight: {{grid: [0.1, 0.5, 1]}}")
    for key, spec in space.items():
        _check_domain(key, spec)
        for value in probe_values(spec):
            try:
                trial_config(base.to_dict(), {key: value})
            except ConfigError as err:
                raise ConfigError(f"search_space.{key}: {err}") from None
    return Sweep(base, dict(space), settings, str(path))


def _validate_settings(s: TuneSettings, base: Config) -> None:
    check_choice("tune.mode", s.mode, ("max", "min"))
    check_choice("tune.scheduler.mode", s.scheduler.mode or s.mode, ("max", "min"))
    check_choice("tune.scheduler.type", s.scheduler.type, ("none", "asha"))
    if s.num_samples < 1 or (s.max_concurrent_trials is not None and s.max_concurrent_trials < 1):
        raise ConfigError("tune.num_samples and tune.max_concurrent_trials must be >= 1")
    if s.scheduler.grace_period < 1 or s.scheduler.reduction_factor <= 1:
        raise ConfigError("tune.scheduler: grace_period must be >= 1 and reduction_factor > 1")
    if "/" in s.name or s.name.startswith("."):
        raise ConfigError(f"tune.name = {s.name!r}: a sweep name is one folder name")
    if s.resources.driver_memory_gb <= 0:
        raise ConfigError("tune.resources.driver_memory_gb must be > 0")
    asha_metric = s.scheduler.metric or s.metric
    for key, name in (("tune.metric", s.metric), ("tune.scheduler.metric", asha_metric)):
        if name not in KNOWN_METRICS:
            raise ConfigError(f"{key} = {name!r}: not a reported metric; allowed: {', '.join(KNOWN_METRICS)}")
        if name in LABELLED_METRICS and _unlabelled(base):
            raise ConfigError(f"{key} = {name!r} needs labels, but the data are unlabelled "
                              f"(data.labels / a folder without class folders); use a label-free score: "
                              f"{', '.join(LABEL_FREE_METRICS)} or the monitor_* ones")
    if s.scheduler.type == "asha" and asha_metric in MONITOR_METRICS and base.train.monitor_every == 0:
        print(f"warning: ASHA compares {asha_metric}, which the training monitor reports only at the last "
              f"epoch with train.monitor_every=0; set it to a few epochs so that ASHA can stop trials early",
              file=sys.stderr)


def _unlabelled(base: Config) -> bool:
    """Whether the sweep's data are known, cheaply and before any trial, to have no labels."""
    if base.data.labels == "none":
        return True
    if base.data.dataset == "image_folder" and base.data.root:
        from nrcc_scale.data.unlabelled import has_top_level_images

        root = Path(base.data.root).expanduser()
        return root.is_dir() and has_top_level_images(root)
    return False
