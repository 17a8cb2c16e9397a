"""Tests for trainer.config: validation messages, overrides and the shipped configs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trainer.config import Config, config_from_dict, config_to_dict, load_config
from trainer.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(data: object) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, "x.yaml")
    return str(info.value)


def test_example_error_message_names_file_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "student:\n  heads: four\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: student.heads must be a positive int, got 'four'"
    assert isinstance(info.value, UserError)
    assert "\n" not in str(info.value)


def test_defaults() -> None:
    cfg = config_from_dict({})
    assert cfg == Config()
    assert cfg.student.heads == 4
    assert cfg.masking.spatial_ratio == 0.35
    assert cfg.sdm.ratio == 0.3
    assert config_from_dict(None) == Config()
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("tta:\n  sigma: .nan\n", "tta.sigma"),
        ("train:\n  lr: .inf\n", "train.lr"),
        ("train:\n  lr: -.inf\n", "train.lr"),
        ("sdm:\n  ratio: .nan\n", "sdm.ratio"),
        ("student:\n  heads: .inf\n", "student.heads"),
        ("train:\n  epochs: .nan\n", "train.epochs"),
    ],
)
def test_non_finite_values_raise_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = _write(tmp_path, text)
    pattern = rf"^{re.escape(str(path))}: {re.escape(field)} must be .*, got -?(nan|inf)$"
    with pytest.raises(ConfigError, match=pattern):
        load_config(path)


def test_non_finite_float_message() -> None:
    msg = _error({"score": {"sigma": float("nan")}})
    assert msg == "x.yaml: score.sigma must be a finite number, got nan"
    assert "finite" in _error({"calibration": {"target_frr": float("inf")}})


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"studnet": {}}, "unknown field studnet"),
        ({"student": {"head": 4}}, "unknown field student.head"),
        ({"train": {"epochs": 2, "epoch": 3}}, "unknown field train.epoch"),
    ],
)
def test_unknown_fields_raise(data: dict, needle: str) -> None:
    msg = _error(data)
    assert needle in msg
    assert "valid:" in msg


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"train": {"epochs": 2.5}}, "train.epochs must be a non-negative int, got 2.5"),
        ({"train": {"epochs": True}}, "train.epochs must be a non-negative int, got True"),
        ({"backbone": {"pretrained": "yes"}}, "backbone.pretrained must be a bool (true/false), got 'yes'"),
        ({"train": {"lr": "fast"}}, "train.lr must be positive, got 'fast'"),
        ({"train": {"lr": 0}}, "train.lr must be positive, got 0"),
        ({"seed": "zero"}, "seed must be an int, got 'zero'"),
        (
            {"backbone": {"name": "vgg"}},
            "backbone.name must be one of 'tf_efficientnet_lite0', 'tf_efficientnet_lite2', "
            "'wide_resnet50_2'",
        ),
        ({"backbone": {"weights": 3}}, "backbone.weights must be"),
        ({"student": {"width": "wide"}}, "student.width must be 'auto' or a positive int, got 'wide'"),
        ({"sdm": {"ratio": 0}}, "sdm.ratio must be in (0, 1], got 0"),
        ({"masking": {"spatial_ratio": 1.0}}, "masking.spatial_ratio must be in [0, 1), got 1.0"),
        ({"bank": {"aggregate": 2}}, "bank.aggregate must be a positive odd int, got 2"),
        ({"data": {"input_size": [250, 256]}}, "data.input_size must be 'auto' or [H, W]"),
        ({"data": {"input_size": "big"}}, "data.input_size must be 'auto' or [H, W]"),
        ({"train": {"device": "tpu"}}, "train.device must be 'auto', 'cpu' or 'cuda[:N]', got 'tpu'"),
        ({"student": "big"}, "student must be a mapping, got 'big'"),
    ],
)
def test_wrong_types_and_values(data: dict, expected: str) -> None:
    msg = _error(data)
    assert msg.startswith("x.yaml: ")
    assert expected in msg


def test_valid_values_are_converted() -> None:
    cfg = config_from_dict(
        {
            "train": {"lr": 1, "device": "cuda:1"},
            "data": {"input_size": [256, 320]},
            "student": {"width": 64},
            "backbone": {"weights": "/tmp/w.safetensors"},
        }
    )
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.input_size == [256, 320]
    assert cfg.student.width == 64
    assert cfg.backbone.weights == "/tmp/w.safetensors"


def test_cross_field_checks() -> None:
    assert "divisible by student.heads" in _error({"student": {"width": 30, "heads": 4}})
    assert "enable at least one" in _error({"student": {"enabled": False}, "bank": {"enabled": False}})
    # a disabled student does not need a divisible width
    assert config_from_dict({"student": {"enabled": False, "width": 30}}).student.width == 30


def test_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  epochs: 15\n  batch_size: 4\n")
    cfg = load_config(path, overrides={"train.epochs": 2, "student.heads": 2, "seed": 7})
    assert cfg.train.epochs == 2
    assert cfg.train.batch_size == 4  # untouched sibling
    assert cfg.student.heads == 2  # section created
    assert cfg.seed == 7
    with pytest.raises(ConfigError, match=r"train\.epochs must be a non-negative int, got -1"):
        load_config(path, overrides={"train.epochs": -1})
    with pytest.raises(ConfigError, match=r"unknown field train\.epoch"):
        load_config(path, overrides={"train.epoch": 2})
    # the file is not modified
    assert path.read_text() == "train:\n  epochs: 15\n  batch_size: 4\n"


def test_overrides_into_empty_section_and_bad_parent(tmp_path: Path) -> None:
    empty = _write(tmp_path, "seed: 1\ntrain:\n")
    assert load_config(empty, overrides={"train.epochs": 3}).train.epochs == 3
    assert load_config(_write(tmp_path, "", "blank.yaml"), overrides={"train.epochs": 3}).train.epochs == 3
    with pytest.raises(ConfigError, match=r"cannot set seed\.x"):
        load_config(empty, overrides={"seed.x": 2})
    listing = _write(tmp_path, "- 1\n- 2\n", "list.yaml")
    with pytest.raises(ConfigError, match="the config must be a mapping"):
        load_config(listing, overrides={"train.epochs": 2})


def test_invalid_yaml_is_one_line_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "student:\n  heads: [4\nbank: {\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: not valid YAML")
    assert "line" in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("name", "teacher"),
    [
        ("masf_lite2.yaml", "tf_efficientnet_lite2"),
        ("masf_lite2_fast.yaml", "tf_efficientnet_lite2"),
        ("masf_lite0_demo.yaml", "tf_efficientnet_lite0"),
        ("masf_wrn50.yaml", "wide_resnet50_2"),
    ],
)
def test_shipped_configs_load(name: str, teacher: str) -> None:
    cfg = load_config(REPO / "configs" / "train" / name)
    assert isinstance(cfg, Config)
    assert cfg.backbone.name == teacher
    assert cfg.sdm.ratio == pytest.approx(0.3)
    assert cfg.masking.spatial_ratio == pytest.approx(0.35)
    assert cfg.masking.freq_ratio == pytest.approx(0.25)


def test_the_score_mix_is_null_or_a_share(tmp_path: Path) -> None:
    path = _write(tmp_path, "fusion:\n  split_score: true\n")
    cfg = load_config(path)
    assert cfg.fusion.split_score and cfg.fusion.score_cos_weight is None
    assert load_config(path, overrides={"fusion.score_cos_weight": 0.25}).fusion.score_cos_weight == 0.25
    with pytest.raises(
        ConfigError, match=r"fusion\.score_cos_weight must be null or a number in \[0, 1\], got 1\.5"
    ):
        load_config(path, overrides={"fusion.score_cos_weight": 1.5})
