"""Tests for engines.tensorrt.bundle_engines: engines built into a bundle (TensorRT-RTX, no GPU), chosen."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from engine_support import ExportedBundle

from engines.bundle import Bundle, seal_manifest, sha256_file
from engines.errors import BundleError
from engines.tensorrt.bundle_engines import build_bundle_engine, engine_name, select_engine
from engines.tensorrt.record import BuildRecord

trt_rtx = pytest.importorskip(
    "tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install -e '.[tensorrt-build]')"
)


@pytest.fixture(scope="module")
def built(exported: ExportedBundle, tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, BuildRecord]:
    copy = tmp_path_factory.mktemp("with_engines") / "part.bundle"
    shutil.copytree(exported.path, copy)  # the shared bundle stays engine-free
    build_bundle_engine(copy, "fp16", 2, compute_capability="SM86", flavour="tensorrt_rtx")
    return build_bundle_engine(copy, "fp16", 4, compute_capability="SM86", flavour="tensorrt_rtx")  # replaces


def test_engine_and_record_are_bundle_files(built: tuple[Bundle, BuildRecord]) -> None:
    bundle, record = built
    reopened = Bundle.open(bundle.path)  # verifies every checksum
    files = reopened.manifest["files"]
    assert sorted(files) == [
        "model.fp16.onnx",
        "model.fp16.sm86.build.json",
        "model.fp16.sm86.engine",
        "model.onnx",
    ]
    assert reopened.engines == [
        {
            "file": "model.fp16.sm86.engine",
            "record": "model.fp16.sm86.build.json",
            "precision": "fp16",
            "tensorrt": f"tensorrt_rtx {trt_rtx.__version__}",
            "target": ["SM86"],
            "max_batch": 4,
            "network": "model.fp16.onnx",
        }
    ]
    assert files["model.fp16.sm86.engine"]["sha256"] == record.engine_sha256
    stored = BuildRecord.load(bundle.file("model.fp16.sm86.build.json"))
    assert stored == record and stored.engine_file == "model.fp16.sm86.engine" and stored.max_batch == 4
    assert stored.onnx_sha256 == files["model.onnx"]["sha256"]
    assert stored.network_onnx_sha256 == sha256_file(bundle.file("model.fp16.onnx"))
    assert not [p for p in bundle.path.parent.iterdir() if p.name.startswith(".")]  # no temporary dirs left


def test_select_engine(built: tuple[Bundle, BuildRecord]) -> None:
    bundle, record = built
    version = trt_rtx.__version__
    entry, chosen, problems = select_engine(bundle, "tensorrt_rtx", version, (8, 6))
    assert (
        entry is not None
        and entry["file"] == "model.fp16.sm86.engine"
        and chosen == record
        and problems == []
    )
    assert select_engine(bundle, "tensorrt_rtx", version, (8, 9)) == (
        None, None, ["model.fp16.sm86.engine: built for SM86, this GPU is SM89"],
    )  # fmt: skip
    assert select_engine(bundle, "tensorrt_rtx", version, (8, 6), precision="fp32")[2] == [
        "model.fp16.sm86.engine: precision fp16, not fp32"
    ]
    assert select_engine(bundle, "tensorrt", "10.9.0", (8, 6))[2] == [
        "model.fp16.sm86.engine: built with tensorrt_rtx, this machine runs tensorrt"
    ]
    with pytest.raises(BundleError, match=r"has no engine 'model.fp32.engine'"):
        select_engine(bundle, "tensorrt_rtx", version, (8, 6), engine="model.fp32.engine")


def test_engine_names_and_manifest_checks(built: tuple[Bundle, BuildRecord], tmp_path: Path) -> None:
    _, record = built
    assert engine_name(record) == "model.fp16.sm86.engine"
    assert engine_name(dataclasses.replace(record, target_sms=[])) == "model.fp16.rtx.engine"
    trt10 = dataclasses.replace(record, tensorrt_flavour="tensorrt", target_sms=["SM90"], precision="fp32")
    assert engine_name(trt10) == "model.fp32.sm90.engine"
    assert (
        engine_name(dataclasses.replace(trt10, hardware_compatibility="AMPERE_PLUS"))
        == "model.fp32.ampere-plus.engine"
    )
    copy = tmp_path / "b"
    shutil.copytree(built[0].path, copy)
    doc = json.loads((copy / "manifest.json").read_text())
    doc["engines"][0]["record"] = "gone.build.json"
    (copy / "manifest.json").write_text(json.dumps(seal_manifest(doc)))  # a tool's edit, resealed
    with pytest.raises(BundleError, match=r"engines\[0\].record 'gone.build.json' is not in files"):
        Bundle.open(copy)
