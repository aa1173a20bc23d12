"""Every file under cluster/ checked against what Ray (and KubeRay's in-tree autoscaler) will do with it.

* Ray autoscaler YAMLs (aws, gcp, local_fake): Ray's own validator (``validate_config``: the JSON schema
  ``ray/autoscaler/ray-schema.json`` through jsonschema, plus its cross-field checks), Ray's
  ``prepare_config`` (defaults merge, setup-command merge, docker check, per-type worker limits) where
  the provider defaults ship with the wheel, and the nrcc-specific shape (CPU-0 head, spot GPU workers
  0..N, ffcv apt packages, ``pip install -e '.[gpu,ffcv]'``, loopback dashboard).
* KubeRay manifests: Ray ships no CRD schema, so the structure is checked here and the cluster spec is
  translated with the function KubeRay's in-tree autoscaler itself uses
  (``_derive_autoscaling_config_from_ray_cr``), which ends in the same ``validate_config``.
* All files: nothing that looks like a secret or a real account id; local configs bind to loopback.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import shlex
import typing
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.autoscaler._private import util as autoscaler_util
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.providers import _get_node_provider_cls
from ray.autoscaler._private.util import hash_runtime_conf, prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"

AUTOSCALER_FILES = ["aws.yaml", "gcp.yaml", "local_fake.yaml"]
CLOUD_FILES = ["aws.yaml", "gcp.yaml"]
KUBERAY_FILES = ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml"]
FFCV_APT = ("pkg-config", "libturbojpeg0-dev", "libopencv-dev")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# The training overrides the templates may use (they exist in nrcc_scale.config today).
KNOWN_TRAIN_KEYS = {
    "storage_path", "name", "train.num_workers", "train.use_gpu", "train.max_failures", "train.epochs",
    "data.root", "data.format", "data.beton", "data.cache_dir",
}  # fmt: skip
DOCKER_WORKDIR_RE = re.compile(r"^WORKDIR\s+(\S+)", re.M)


def load(rel: str) -> dict[str, Any]:
    """Parse ``cluster/<rel>`` as YAML (a mapping)."""
    data = yaml.safe_load((CLUSTER / rel).read_text())
    assert isinstance(data, dict), f"{rel}: top level must be a mapping"
    return data


def all_cluster_files() -> list[Path]:
    """Every regular file under cluster/."""
    return sorted(p for p in CLUSTER.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def all_cluster_yamls() -> list[str]:
    """Every YAML file under cluster/, relative to it."""
    return sorted(str(p.relative_to(CLUSTER)) for p in all_cluster_files() if p.suffix in {".yaml", ".yml"})


def node_types(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(head node type, {name: worker node type}) of an autoscaler config."""
    types_ = config["available_node_types"]
    head = types_[config["head_node_type"]]
    return head, {k: v for k, v in types_.items() if k != config["head_node_type"]}


def gpu_worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Worker node types that offer at least one GPU."""
    return {k: v for k, v in node_types(config)[1].items() if v["resources"].get("GPU", 0) >= 1}


def train_commands(text: str) -> list[list[str]]:
    """Token lists of every ``python -m nrcc_scale.train ...`` command written in ``text``.

    Commands may sit in comments and continue over lines ending in a backslash.
    """
    commands: list[list[str]] = []
    lines = [re.sub(r"^\s*#\s?", "", line).rstrip() for line in text.splitlines()]
    i = 0
    while i < len(lines):
        if "nrcc_scale.train" in lines[i]:
            parts = [lines[i]]
            while parts[-1].endswith("\\") and i + 1 < len(lines):
                i += 1
                parts.append(lines[i])
            joined = " ".join(p.rstrip("\\") for p in parts)
            tokens = shlex.split(joined[joined.index("python -m nrcc_scale.train") :], comments=False)
            commands.append(tokens)
        i += 1
    return commands


def overrides(tokens: list[str]) -> dict[str, str]:
    """``key=value`` arguments of a train command (after ``python -m nrcc_scale.train``)."""
    result = {}
    skip_next = False
    for token in tokens[3:]:
        if skip_next:
            skip_next = False
            continue
        if token == "--config":
            skip_next = True
            continue
        if "=" in token and not token.startswith("-"):
            key, value = token.split("=", 1)
            result[key] = value
    return result


def k8s_quantity(value: str | int) -> float:
    """Parse a Kubernetes quantity (``500m``, ``16Gi``, ``4``) into a float."""
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def ray_cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """(label, RayCluster spec) for the RayCluster and for the RayJob's embedded cluster."""
    return [
        ("raycluster", load("kuberay/raycluster.yaml")["spec"]),
        ("rayjob", load("kuberay/rayjob.yaml")["spec"]["rayClusterSpec"]),
    ]


# --------------------------------------------------------------------------------------------------
# Coverage: every YAML is one of the validated kinds
# --------------------------------------------------------------------------------------------------


def test_every_cluster_yaml_is_validated_by_this_module() -> None:
    """A new YAML under cluster/ must be added to the lists above (and so get validated)."""
    assert set(all_cluster_yamls()) == set(AUTOSCALER_FILES) | set(KUBERAY_FILES)


@pytest.mark.parametrize("rel", all_cluster_yamls())
def test_yaml_kind_matches_its_list(rel: str) -> None:
    """Autoscaler configs have a provider; KubeRay manifests have apiVersion ray.io/v1."""
    data = load(rel)
    if rel in AUTOSCALER_FILES:
        assert "provider" in data and "apiVersion" not in data
    else:
        assert data.get("apiVersion") == "ray.io/v1"


# --------------------------------------------------------------------------------------------------
# Ray autoscaler configs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", AUTOSCALER_FILES)
def test_autoscaler_yaml_passes_rays_validator(rel: str) -> None:
    """Ray's ``validate_config`` (JSON schema + cross-field checks) accepts the file as written."""
    config = load(rel)
    validate_config(config)
    _, workers = node_types(config)
    assert workers, "no worker node type"
    for name, worker in workers.items():
        assert worker.get("min_workers", 0) == 0, f"{name}: workers must scale from 0"
        assert 1 <= worker["max_workers"] <= config["max_workers"], name
    assert config["idle_timeout_minutes"] > 0, "idle nodes must be removed"
    assert config["upscaling_speed"] > 0


@pytest.mark.parametrize("rel", AUTOSCALER_FILES)
def test_validator_is_strict_enough_to_catch_mistakes(rel: str) -> None:
    """The same validator rejects a typo'd key and a fractional resource (so the test above can fail)."""
    import jsonschema

    config = load(rel)
    typo = copy.deepcopy(config)
    typo["idle_timeout_minute"] = 5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(typo)
    fractional = copy.deepcopy(config)
    head, _ = node_types(fractional)
    head["resources"]["CPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(fractional)


@pytest.mark.parametrize("rel", CLOUD_FILES)
def test_cloud_yaml_survives_rays_prepare_config(rel: str) -> None:
    """``prepare_config`` (defaults.yaml merge, setup merge, docker check) keeps our choices, stays valid."""
    raw = load(rel)
    prepared = prepare_config(raw)
    validate_config(prepared)
    head, workers = node_types(prepared)
    assert head["max_workers"] == 0
    assert head["resources"]["CPU"] == 0, "the head must not run training (CPU 0)"
    # Our keys win over Ray's defaults.yaml (which would otherwise add m5.large nodes etc.).
    assert set(prepared["available_node_types"]) == set(raw["available_node_types"])
    assert prepared["max_workers"] == raw["max_workers"]
    # Setup commands after Ray's merge: common ones first, then the per-role ones.
    for role, extras in (("head", "ffcv"), ("worker", "gpu,ffcv")):
        cmds = " && ".join(prepared[f"{role}_setup_commands"])
        for pkg in FFCV_APT:
            assert pkg in cmds, f"{role}: apt package {pkg} missing"
        pip_line = rf"pip install[^&;]*-e '\.\[{extras}\]'"
        assert re.search(pip_line, cmds), f"{role}: no pip install -e .[{extras}]"
        assert cmds.index("apt-get install") < cmds.index("pip install -q -e"), "apt libs before ffcv build"


@pytest.mark.parametrize("rel", CLOUD_FILES)
def test_cloud_yaml_shape(rel: str) -> None:
    """CPU-0 on-demand head; spot GPU workers 0..N; repo mounted and installed; loopback dashboard."""
    config = load(rel)
    provider = config["provider"]["type"]
    head, _ = node_types(config)
    gpu_types = gpu_worker_types(config)
    assert len(gpu_types) == 1, "exactly one GPU worker group"
    (gpu,) = gpu_types.values()
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 2
    assert head["resources"] == {"CPU": 0}

    if provider == "aws":
        assert gpu["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        assert "InstanceMarketOptions" not in head["node_config"], "the head must not be spot"
        assert config["provider"]["cache_stopped_nodes"] is False, "spot nodes cannot be stopped"
        assert re.match(r"(g5|g6|g6e|p4d|p5)\.", gpu["node_config"]["InstanceType"])
    else:
        assert provider == "gcp"
        scheduling = gpu["node_config"]["scheduling"]
        assert scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible") is True
        assert scheduling["onHostMaintenance"] == "TERMINATE", "GPU VMs cannot live-migrate"
        assert "scheduling" not in head["node_config"], "the head must not be preemptible"
        assert re.match(r"(a2|a3|g2)-", gpu["node_config"]["machineType"])
        scopes = [s for sa in gpu["node_config"]["serviceAccounts"] for s in sa["scopes"]]
        assert any(s.endswith("/cloud-platform") or "devstorage.read_write" in s for s in scopes)
        project = config["provider"]["project_id"]
        assert project is None or "<" not in project, "project_id must be null or a real id, not <...>"

    # Docker images: the Python and Ray versions the project pins.
    docker = config["docker"]
    for key in ("head_image", "worker_image"):
        assert docker[key].startswith(f"rayproject/ray:{ray.__version__}-py311"), docker[key]
    assert docker["worker_image"].endswith("-gpu")

    # The repository is copied to the nodes and installed from there.
    ((remote, local),) = config["file_mounts"].items()
    assert local == "."
    assert ".gitignore" in config["rsync_filter"], "skip .venv and other ignored paths"
    assert any(remote in c and "pip install" in c for c in config["worker_setup_commands"])

    # Head: autoscaler on, dashboard on loopback only (reach it through `ray dashboard`).
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])
    # Nothing personal in auth: the launcher creates its own key pair.
    assert set(config["auth"]) == {"ssh_user"}


@pytest.mark.parametrize("rel", CLOUD_FILES)
def test_cloud_yaml_documents_job_submission(rel: str) -> None:
    """The comment block shows ray up / ray job submit with a cloud storage_path and max_failures."""
    text = (CLUSTER / rel).read_text()
    config = load(rel)
    for needle in (f"ray up -y cluster/{rel}", "ray job submit --address http://127.0.0.1:8265", "ray down"):
        assert needle in text
    commands = train_commands(text)
    assert commands, "no `python -m nrcc_scale.train` example"
    scheme = "s3://" if config["provider"]["type"] == "aws" else "gs://"
    gpu_capacity = sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu_worker_types(config).values())
    for tokens in commands:
        args = overrides(tokens)
        assert args["storage_path"].startswith(scheme)
        assert int(args["train.max_failures"]) != 0, "spot loss needs train.max_failures"
        assert args["train.use_gpu"] == "true"
        assert int(args["train.num_workers"]) <= gpu_capacity, "more workers than GPUs the cluster can have"


def test_local_fake_is_self_sufficient_for_the_monitor(monkeypatch: pytest.MonkeyPatch) -> None:
    """local_fake.yaml works without Ray's missing fake_multi_node/example.yaml.

    The monitor of ``ray start --autoscaling-config`` reads the file as-is (no defaults merge), so
    every key it indexes must be present. Ray's ``prepare_config`` is run with *empty* provider
    defaults to prove that nothing is taken from example.yaml.
    """
    config = load("local_fake.yaml")
    provider = config["provider"]
    assert provider["type"] == "fake_multinode"
    for flag in ("use_node_id_as_ip", "disable_node_updaters", "disable_launch_config_check"):
        assert provider[flag] is True, flag
    # What StandardAutoscaler.reset() reads directly:
    hash_runtime_conf(
        config["file_mounts"],
        config["cluster_synced_files"],
        [config["worker_setup_commands"], config["worker_start_ray_commands"]],
    )
    monkeypatch.setattr(autoscaler_util, "_get_default_config", lambda provider_config: {})
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    head, workers = node_types(prepared)
    assert config["head_node_type"] == FAKE_HEAD_NODE_TYPE, "the fake provider tags its head with this type"
    assert head["resources"]["CPU"] <= 1
    (worker,) = workers.values()
    assert worker["resources"] == {"CPU": 1}
    assert (worker["min_workers"], worker["max_workers"]) == (0, 3)
    assert config["max_workers"] >= worker["max_workers"]
    assert config["idle_timeout_minutes"] <= 0.5, "tests wait for scale-down; keep the timeout short"


def test_local_fake_provider_instantiates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray resolves ``fake_multinode`` to its FakeMultiNodeProvider, whose head matches our head type."""
    config = load("local_fake.yaml")
    monkeypatch.setenv("RAY_FAKE_CLUSTER", "1")
    provider_cls = _get_node_provider_cls(config["provider"])
    provider = provider_cls(config["provider"], config["cluster_name"])
    (head_id,) = provider.non_terminated_nodes({})
    assert provider.node_tags(head_id)["ray-user-node-type"] == config["head_node_type"]


def test_local_fake_binds_loopback() -> None:
    """Fake workers join a loopback GCS; the documented start command binds everything to 127.0.0.1."""
    config = load("local_fake.yaml")
    host = config["provider"]["gcs_address"].rsplit(":", 1)[0]
    assert host in LOOPBACK_HOSTS
    text = (CLUSTER / "local_fake.yaml").read_text()
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in text
    assert "RAY_FAKE_CLUSTER=1" in text and "--autoscaling-config=cluster/local_fake.yaml" in text
    hosts = re.findall(r"--(?:dashboard-host|node-ip-address)[= ](\S+)", text)
    assert hosts and set(hosts) <= LOOPBACK_HOSTS, hosts


# --------------------------------------------------------------------------------------------------
# KubeRay manifests
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "spec"), ray_cluster_specs(), ids=["raycluster", "rayjob"])
def test_kuberay_cluster_spec_structure(label: str, spec: dict[str, Any]) -> None:
    """Autoscaling on, CPU-0 head on ClusterIP, GPU worker group 0..N with nvidia.com/gpu limits."""
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == ray.__version__
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0

    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "the head must not run training"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", "do not expose the dashboard/GCS"
    groups = [head, *spec["workerGroupSpecs"]]
    images = set()
    for group in groups:
        # KubeRay's CRD types rayStartParams as map[string]string.
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]
        container = group["template"]["spec"]["containers"][0]
        images.add(container["image"])
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        for key in ("cpu", "memory"):
            assert k8s_quantity(requests[key]) <= k8s_quantity(limits[key]), f"{label}: {key} request > limit"
    assert len(images) == 1, f"head and workers must run the same image: {images}"
    (image,) = images
    assert "/nrcc-scale:" in image, "the image built from this repo (cluster/kuberay/Dockerfile)"

    gpu_groups = [
        g for g in spec["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]  # fmt: skip
    assert len(gpu_groups) == 1, "exactly one GPU worker group"
    (gpu,) = gpu_groups
    assert gpu["minReplicas"] == 0 <= gpu["replicas"] <= gpu["maxReplicas"]
    assert gpu["maxReplicas"] >= 2
    resources = gpu["template"]["spec"]["containers"][0]["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]
    tolerations = gpu["template"]["spec"].get("tolerations", [])
    assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), "GPU nodes are usually tainted"
    mounts = {m["mountPath"] for m in gpu["template"]["spec"]["containers"][0].get("volumeMounts", [])}
    assert "/dev/shm" in mounts, "PyTorch data loaders need a real /dev/shm"


@pytest.mark.parametrize(("label", "spec"), ray_cluster_specs(), ids=["raycluster", "rayjob"])
def test_kuberay_autoscaler_translation_is_valid(label: str, spec: dict[str, Any]) -> None:
    """KubeRay's in-tree autoscaler translation of the spec passes Ray's validator with the right numbers."""
    metadata = {"name": label, "namespace": "default"}
    cr = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": metadata, "spec": copy.deepcopy(spec)}
    config = _derive_autoscaling_config_from_ray_cr(cr)  # calls validate_config itself
    validate_config(config)
    head, workers = node_types(config)
    assert head["resources"]["CPU"] == 0
    gpu = {name: t for name, t in workers.items() if t["resources"].get("GPU")}
    (group,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] in gpu]
    node_type = gpu[group["groupName"]]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert node_type["resources"]["GPU"] == int(limits["nvidia.com/gpu"])
    assert node_type["resources"]["CPU"] == int(k8s_quantity(limits["cpu"]))
    assert node_type["min_workers"] == group["minReplicas"]
    assert node_type["max_workers"] == group["maxReplicas"]
    assert config["idle_timeout_minutes"] == spec["autoscalerOptions"]["idleTimeoutSeconds"] / 60


def test_kuberay_translation_rejects_a_broken_group() -> None:
    """The translation + validator do fail on nonsense (negative check for the test above)."""
    spec = copy.deepcopy(load("kuberay/raycluster.yaml")["spec"])
    del spec["headGroupSpec"]["rayStartParams"]["num-cpus"]
    del spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    cr = {"metadata": {"name": "broken", "namespace": "default"}, "spec": spec}
    with pytest.raises(ValueError, match="CPU"):
        _derive_autoscaling_config_from_ray_cr(cr)


def test_rayjob_runs_nrcc_training_and_cleans_up() -> None:
    """RayJob: entrypoint is nrcc_scale.train with sane overrides; the cluster is deleted afterwards."""
    job = load("kuberay/rayjob.yaml")
    assert job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    tokens = shlex.split(spec["entrypoint"])
    assert tokens[:3] == ["python", "-m", "nrcc_scale.train"]
    args = overrides(tokens)
    assert set(args) <= KNOWN_TRAIN_KEYS, set(args) - KNOWN_TRAIN_KEYS
    assert re.match(r"(s3|gs)://", args["storage_path"]), "checkpoints must outlive the pods"
    assert int(args["train.max_failures"]) != 0, "spot/preemptible pods need retries"
    gpu_groups = spec["rayClusterSpec"]["workerGroupSpecs"]
    capacity = 0
    for group in gpu_groups:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        capacity += group["maxReplicas"] * int(limits.get("nvidia.com/gpu", 0))
    assert args["train.use_gpu"] == "true" and int(args["train.num_workers"]) <= capacity

    # --config is an absolute path inside the image (the job does not run from the repo directory).
    config_path = tokens[tokens.index("--config") + 1]
    workdir = DOCKER_WORKDIR_RE.findall((KUBERAY / "Dockerfile").read_text())[-1]
    assert config_path.startswith(workdir + "/configs/"), (config_path, workdir)
    # data.root must be mounted into the worker pods.
    worker_mounts = {
        m["mountPath"]
        for g in gpu_groups
        for m in g["template"]["spec"]["containers"][0].get("volumeMounts", [])
    }
    assert any(args["data.root"].startswith(m.rstrip("/") + "/") for m in worker_mounts), args["data.root"]


def test_raycluster_is_a_raycluster() -> None:
    """The RayCluster manifest has the kind and metadata kubectl needs."""
    cluster = load("kuberay/raycluster.yaml")
    assert cluster["kind"] == "RayCluster"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", cluster["metadata"]["name"])


def test_documented_overrides_exist_in_the_project_config() -> None:
    """Every key=value in the templates' train commands is a real nrcc_scale.config key of the right type."""
    config_module = pytest.importorskip("nrcc_scale.config")
    load_config = getattr(pytest.importorskip("nrcc_scale.config_load"), "load_config", None)
    if load_config is None:
        pytest.skip("nrcc_scale.config_load.load_config not available")
    commands = [shlex.split(load("kuberay/rayjob.yaml")["spec"]["entrypoint"])]
    for path in all_cluster_files():
        if path.suffix in {".yaml", ".yml", ".md"}:
            commands += train_commands(path.read_text())
    assert len(commands) >= 4
    for tokens in commands:
        args = overrides(tokens)
        assert set(args) <= KNOWN_TRAIN_KEYS, set(args) - KNOWN_TRAIN_KEYS
        concrete = {k: v for k, v in args.items() if "<" not in v}
        load_config(files=[], overrides=[f"{k}={v}" for k, v in concrete.items()], validate=False)
    # And KNOWN_TRAIN_KEYS itself matches the dataclasses.
    hints = typing.get_type_hints(config_module.Config)
    for key in KNOWN_TRAIN_KEYS:
        section, _, leaf = key.rpartition(".")
        fields = {f.name for f in dataclasses.fields(hints[section])} if section else set(hints)
        assert leaf in fields, key


def test_dockerfile_builds_this_package() -> None:
    """Dockerfile: Ray/Python versions of the project, ffcv apt libs, pip install -e .[gpu,ffcv]."""
    text = (KUBERAY / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)", text, re.M)
    assert base and base.group(1) == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert re.search(r"^FROM \$\{RAY_IMAGE\}", text, re.M)
    for pkg in FFCV_APT:
        assert pkg in text
    assert re.search(r"^ARG EXTRAS=gpu,ffcv$", text, re.M)
    assert 'pip install --no-cache-dir -e ".[${EXTRAS}]"' in text
    for src in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for item in src.split():
            if "*" not in item:
                assert (REPO / item).exists(), f"COPY source {item} is not in the repository"
    assert not re.search(r"^COPY (?:--\S+ )*\. ", text, re.M), "do not copy the whole tree (.venv is huge)"


def test_readme_covers_every_template() -> None:
    """cluster/README.md has a section for each template and the local fake recipe."""
    text = (CLUSTER / "README.md").read_text()
    for name in ("aws.yaml", "gcp.yaml", "local_fake.yaml", "raycluster.yaml", "rayjob.yaml", "Dockerfile"):
        assert name in text, name
    assert "RAY_FAKE_CLUSTER=1" in text and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in text
    assert "RAY_AUTH_MODE=token" in text


# --------------------------------------------------------------------------------------------------
# Secrets and account ids
# --------------------------------------------------------------------------------------------------

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA|AGPA|AROA)[0-9A-Z]{16}\b"),
    "AWS secret key setting": re.compile(r"(?i)aws_secret_access_key|aws_session_token"),
    "private key block": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GCP service-account key": re.compile(r"\"private_key(_id)?\"\s*:"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "password": re.compile(r"(?i)passw(or)?d"),
    "secret/token value": re.compile(
        r"(?i)(?:secret|token|api[_-]?key|credentials?)[\"']?\s*[:=]\s*[\"']?(?![<$]|YOUR)[A-Za-z0-9/+_\-]{12,}"
    ),
    "long hex string (token?)": re.compile(r"\b[0-9a-f]{32,}\b"),
    "AWS account id in ARN": re.compile(r"arn:aws[a-z-]*:[a-z0-9-]+:[a-z0-9-]*:\d{12}:"),
    "12-digit number (account id?)": re.compile(r"(?<![\d.])\d{12}(?![\d.])"),
}


def find_secrets(text: str) -> list[str]:
    """Names of the secret patterns that match ``text``."""
    return [name for name, pattern in SECRET_PATTERNS.items() if pattern.search(text)]


@pytest.mark.parametrize("path", all_cluster_files(), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_no_secrets_in_cluster_files(path: Path) -> None:
    """No keys, tokens, passwords or account ids in any file under cluster/ (placeholders only)."""
    text = path.read_text()
    assert find_secrets(text) == [], f"{path.name}: looks like a secret"


def test_secret_scanner_catches_samples() -> None:
    """Each pattern fires on a synthetic sample (built at run time, so no secret sits in the source)."""
    samples = {
        "AWS access key id": "AKIA" + "ABCDEFGHIJKLMNOP",
        "AWS secret key setting": "aws_secret_access_key = x",
        "private key block": "-----BEGIN RSA " + "PRIVATE KEY-----",
        "GitHub token": "ghp_" + "a1" * 18,
        "password": "password: hunter2",
        "secret/token value": "RAY_AUTH_TOKEN=" + "Zx9" * 6 + "\nclient_secret: " + "Qw7" * 6,
        "long hex string (token?)": "f0" * 32,
        "AWS account id in ARN": "arn:aws:iam::" + "123456789012" + ":instance-profile/x",
    }
    for name, sample in samples.items():
        assert name in find_secrets(sample), name
    # ... and the placeholders the templates use do not fire.
    assert find_secrets("IamInstanceProfile: <your-s3-writer-instance-profile> project_id: null") == []
    assert find_secrets("storage_path=s3://YOUR_BUCKET/nrcc-runs RAY_AUTH_MODE=token") == []
