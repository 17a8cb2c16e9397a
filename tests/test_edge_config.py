"""Tests for edge.config: the line config schema, its checks and path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge.config import config_from_dict, load_edge_config
from engines.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _cam(**kw: object) -> dict:
    return {"name": "cam1", "bundle": "b", "source": {"kind": "folder", "path": "p"}, **kw}


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump({"cameras": [_cam()], "evidence": {"dir": "ev"}}))
    cfg = load_edge_config(path)
    cam = cfg.cameras[0]
    assert cam.bundle == str(tmp_path / "b") and cam.source.path == str(tmp_path / "p")
    assert cfg.evidence.dir == str(tmp_path / "ev")
    assert cam.mode == "free_run" and cam.backend == "onnxruntime" and cam.threshold is None
    assert cfg.publish.address.startswith("tcp://127.0.0.1:") and cfg.control.address != cfg.publish.address
    assert cfg.camera("cam1") is cam


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"cameras": []}, "cameras must be a non-empty list of cameras"),
        ({"cameras": [_cam(mode="freerun")]}, "cameras[0].mode must be one of 'free_run', 'triggered'"),
        ({"cameras": [_cam(), _cam()]}, "camera name 'cam1' is used twice"),
        ({"cameras": [_cam(name="a/b")]}, "cameras[0].name must be a name of letters"),
        (
            {"cameras": [{"name": "c", "source": {"kind": "folder", "path": "p"}}]},
            "cameras[0].bundle is required",
        ),
        ({"cameras": [_cam(source={"kind": "opencv"})]}, "cameras[0].source.uri is required"),
        ({"cameras": [_cam(source={"kind": "genicam"})]}, "cameras[0].source.cti needs at least one"),
        (
            {"cameras": [_cam(source={"kind": "folder", "path": "p", "step": True})]},
            "step works with a folder",
        ),
        (
            {"cameras": [_cam(source={"kind": "folder", "path": "p", "pixel_format": "YUV"})]},
            "source.pixel_format must be a GenICam pixel format name",
        ),
        ({"cameras": [_cam()], "publish": {"address": "localhost:5"}}, "publish.address must be a ZeroMQ"),
        (
            {"cameras": [_cam()], "security": {"curve": True}},
            "security.curve needs security.server_secret_key",
        ),
        (
            {"cameras": [_cam()], "security": {"require_signed_bundles": True}},
            "require_signed_bundles needs security.trusted_keys",
        ),
        (
            {"cameras": [_cam()], "evidence": {"dir": "ev", "min_free_mb": -1}},
            "evidence.min_free_mb must be non-negative (MB)",
        ),
    ],
)
def test_bad_configs_name_the_field(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc, "line.yaml")
    assert str(info.value).startswith("line.yaml: ") and message in str(info.value)


def test_set_overrides_reach_camera_fields(tmp_path: Path) -> None:
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump({"cameras": [_cam()]}))
    cfg = load_edge_config(path, ["cameras.0.threshold=3.5", "publish.heatmaps=fail"])
    assert cfg.cameras[0].threshold == 3.5 and cfg.publish.heatmaps == "fail"


def test_shipped_edge_configs_are_valid() -> None:
    configs = sorted((REPO / "configs" / "edge").glob("*.yaml"))
    assert configs, "configs/edge has example configs"
    for path in configs:
        load_edge_config(path)
