"""Configuration: YAML + overrides, and one clear line for every mistake, before any work starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nrcc_scale.config import Config, ConfigError, save_config
from nrcc_scale.config_load import load_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_paper_values_for_nrcc() -> None:
    cfg = load_config()
    nrcc = cfg.method.nrcc
    assert (nrcc.weight, nrcc.temperature, nrcc.positive_weight) == (0.1, 0.1, 1.0)
    assert (nrcc.sghmc.delta1, nrcc.sghmc.delta2, nrcc.sghmc.delta3, nrcc.sghmc.steps) == (0.1, 0.05, 0.99, 1)
    assert nrcc.exclude_self and nrcc.negatives_network == "target" and nrcc.anchor == "predictor"
    assert cfg.data.dataset == "digits" and cfg.method.name == "byol"


def test_yaml_files_then_overrides_apply_in_order(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    first.write_text("method:\n  name: infonce\n  nrcc:\n    weight: 0.5\ntrain:\n  epochs: 7\n")
    second = tmp_path / "b.yaml"
    second.write_text("train:\n  epochs: 9\n")
    cfg = load_config([first, second], ["method.nrcc.temperature=1", "eval.bandwidth=0.25", "name=run1"])
    assert cfg.method.name == "infonce"
    assert cfg.method.nrcc.weight == 0.5
    assert cfg.train.epochs == 9
    assert cfg.method.nrcc.temperature == 1.0 and isinstance(cfg.method.nrcc.temperature, float)
    assert cfg.eval.bandwidth == 0.25
    assert cfg.name == "run1"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("method.nrcc.wieght=0.5", "unknown key 'method.nrcc.wieght'"),
        ("method.nrcc.weight=-0.1", "method.nrcc.weight = -0.1: must be in [0, inf]"),
        ("method.nrcc.temperature=0", "method.nrcc.temperature = 0.0: must be in (0, inf]"),
        ("model.backbone=resnet99", "model.backbone = 'resnet99': allowed values are resnet_tiny"),
        ("method.name=simclr2", "method.name = 'simclr2': allowed values are infonce, byol"),
        ("train.epochs=ten", "train.epochs = 'ten': expected an integer"),
        ("train.epochs=2.5", "train.epochs = 2.5: expected an integer"),
        ("method.nrcc.enabled=maybe", "method.nrcc.enabled = 'maybe': expected true or false"),
        ("method.nrcc.negatives=gan", "method.nrcc.negatives = 'gan': allowed values are sghmc, hmc, mc, augment"),
        ("train.batch_size=255", "train.batch_size = 255: must be divisible by train.num_workers = 2"),
        ("method.nrcc=3", "method.nrcc: expected a mapping"),
        ("nokeyvalue", "expected key=value"),
        ("eval.umap_epochs=-5", "eval.umap_epochs = -5: must be in [0, inf]"),
    ],
)
def test_mistakes_name_the_key_value_and_what_is_allowed(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_a_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'optim\.learning_rate': allowed here are"):
        load_config([bad])


def test_saved_config_reloads_identically(tmp_path: Path) -> None:
    cfg = load_config(overrides=["method.name=cueco", "method.cueco.weights=[1, 0.5, 0.2]", "train.use_gpu=true"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config([tmp_path / "config.yaml"])
    assert again == cfg
    assert isinstance(again, Config)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["method"]["cueco"]["weights"] == [1.0, 0.5, 0.2]


def test_every_shipped_config_loads() -> None:
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert files, "configs/ has YAML files"
    for path in files:
        if path.parent.name == "tune":
            continue  # search spaces, checked by the tune tests
        load_config([path])


def test_train_cli_stops_before_any_work_with_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "nrcc_scale.train", "method.nrcc.weight=-1"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert lines == ["config error: method.nrcc.weight = -1.0: must be in [0, inf]"]
    assert "run directory" not in proc.stdout
