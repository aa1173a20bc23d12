"""``train.amp`` takes YAML booleans, and every numeric key takes ``1e-3``-style numbers that YAML 1.1 reads
as strings (PyYAML wants ``1.0e-3``), on the command line and in YAML files (issue 10)."""

from __future__ import annotations

import argparse

import pytest

from nrcc_scale.cli import add_config_arguments, config_from_args
from nrcc_scale.config import ConfigError
from nrcc_scale.config_load import load_config


@pytest.mark.parametrize(("text", "expected"), [("off", "off"), ("false", "off"), ("False", "off"), ("no", "off"),
                                                ("bf16", "bf16"), ("fp16", "fp16"), ("auto", "auto"),
                                                ("true", "auto")])
def test_amp_settings_load(text: str, expected: str) -> None:
    assert load_config(overrides=[f"train.amp={text}"]).train.amp == expected


def test_amp_in_a_yaml_file_takes_off(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\n")
    assert load_config([path]).train.amp == "off"


def test_wrong_amp_names_the_allowed_values() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["train.amp=fp8"])
    message = str(err.value)
    assert "train.amp" in message and "'fp8'" in message
    for allowed in ("auto", "off", "bf16", "fp16"):
        assert allowed in message


@pytest.mark.parametrize(("text", "value"), [("1e-3", 1e-3), ("5e-4", 5e-4), ("1E5", 1e5), ("2.5e-3", 2.5e-3),
                                             ("+1e-2", 1e-2), ("0.002", 0.002), ("3", 3.0)])
def test_learning_rate_in_exponent_notation(text: str, value: float) -> None:
    cfg = load_config(overrides=[f"optim.base_lr={text}"])
    assert isinstance(cfg.optim.base_lr, float) and cfg.optim.base_lr == value


def test_yaml_file_numbers_in_exponent_notation(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  base_lr: 5e-4\n  weight_decay: 1E-5\nmethod:\n  cueco:\n    weights: [1, 1e-1, 5e-2]\n"
                    "train:\n  batch_size: 1e2\n")
    cfg = load_config([path])
    assert cfg.optim.base_lr == 5e-4 and cfg.optim.weight_decay == 1e-5
    assert cfg.method.cueco.weights == [1.0, 0.1, 0.05]
    assert cfg.train.batch_size == 100 and isinstance(cfg.train.batch_size, int)


def test_optional_float_key_takes_exponent_notation() -> None:
    assert load_config(overrides=["eval.bandwidth=5e-2"]).eval.bandwidth == 0.05


def test_non_numbers_are_still_rejected() -> None:
    with pytest.raises(ConfigError, match="optim.base_lr"):
        load_config(overrides=["optim.base_lr=fast"])
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(overrides=["train.batch_size=1.5e1"])  # 15.0 is an integer; 1.5e0 would not be
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(overrides=["train.epochs=2.5"])
    assert load_config(overrides=["name=1e-3"]).name == "1e-3"  # string keys keep the text


def test_gpu_keys_have_their_defaults_and_choices() -> None:
    cfg = load_config()
    assert cfg.model.sync_bn is None and cfg.model.channels_last is None and cfg.train.compile is False
    assert cfg.eval.gridshift_backend == "auto"
    assert load_config(overrides=["model.sync_bn=false"]).model.sync_bn is False
    with pytest.raises(ConfigError, match="eval.gridshift_backend"):
        load_config(overrides=["eval.gridshift_backend=cuda"])


def test_command_line_parser_takes_exponent_notation(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  base_lr: 5e-4\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--config", str(path), "optim.weight_decay=1e-6", "train.amp=off"]))
    assert (cfg.optim.base_lr, cfg.optim.weight_decay, cfg.train.amp) == (5e-4, 1e-6, "off")
