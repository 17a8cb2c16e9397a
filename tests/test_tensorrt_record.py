"""Tests for engines.tensorrt.record: build records (JSON) and the engine/runtime compatibility rules."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from engines.errors import BundleError
from engines.tensorrt.record import BuildRecord, compatibility_problems, record_path


def _record(**changes: Any) -> BuildRecord:
    base = BuildRecord(
        engine_file="model.fp16.sm86.engine",
        engine_sha256="ab" * 32,
        engine_size=10,
        onnx_file="model.onnx",
        onnx_sha256="cd" * 32,
        network_onnx_file="model.fp16.onnx",
        network_onnx_sha256="ef" * 32,
        tensorrt_flavour="tensorrt",
        tensorrt_version="10.9.0.34",
        gpu={"name": "NVIDIA RTX A4000", "compute_capability": "8.6", "source": "pycuda"},
        target_sms=["SM86"],
        hardware_compatibility="NONE",
        version_compatible=False,
        precision="fp16",
        strategy="strongly_typed",
        builder_flags=["STRONGLY_TYPED network"],
        profile={"inputs": {}, "max_batch": 8, "opt_batch": 8},
        workspace_mb=1024,
        timing_cache={"path": None, "loaded": False, "saved": False},
        fp32_scopes=["spectral", "scorer"],
        fp32_layers={"model.scorer": 39},
        build_seconds=12.5,
        created="2026-01-01T00:00:00+00:00",
    )
    return dataclasses.replace(base, **changes)


def test_roundtrip_and_path(tmp_path: Path) -> None:
    record = _record()
    assert record_path(tmp_path / "model.fp16.sm86.engine") == tmp_path / "model.fp16.sm86.build.json"
    path = record_path(tmp_path / record.engine_file)
    record.save(path)
    assert BuildRecord.load(path) == record and record.max_batch == 8
    assert json.loads(path.read_text())["schema"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_bad_records(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"build record .*missing.json is missing: rebuild"):
        BuildRecord.load(tmp_path / "missing.json")
    (tmp_path / "r.json").write_text('{"engine_file": ')
    with pytest.raises(BundleError, match=r"is corrupt \(JSONDecodeError\)"):
        BuildRecord.load(tmp_path / "r.json")
    doc = _record().to_dict()
    del doc["engine_sha256"]
    with pytest.raises(BundleError, match=r"missing \['engine_sha256'\]: rebuild with masf-engine build"):
        BuildRecord.from_dict(doc)
    with pytest.raises(BundleError, match="schema 2 is not 1"):
        BuildRecord.from_dict({**_record().to_dict(), "schema": 2})
    with pytest.raises(BundleError, match="not a JSON object"):
        BuildRecord.from_dict([])  # type: ignore[arg-type]


def test_tensorrt_version_and_gpu_rules() -> None:
    rec = _record()
    assert compatibility_problems(rec, "tensorrt", "10.9.0.34", (8, 6)) == []
    assert compatibility_problems(rec, "tensorrt", "10.10.0.1", (8, 6)) == [
        "built with tensorrt 10.9.0.34, this machine runs 10.10.0.1"
    ]
    assert compatibility_problems(rec, "tensorrt", "10.9.0.34", (8, 9)) == [
        "built on a GPU with compute capability 8.6, this GPU is SM89"
    ]
    assert compatibility_problems(rec, "tensorrt", "10.9.0.34", None) == ["no CUDA GPU found"]
    assert compatibility_problems(rec, "tensorrt_rtx", "1.7.1.116", (8, 6)) == [
        "built with tensorrt, this machine runs tensorrt_rtx"
    ]
    compat = _record(version_compatible=True, hardware_compatibility="AMPERE_PLUS")
    assert compatibility_problems(compat, "tensorrt", "10.12.0.36", (9, 0)) == []
    assert compatibility_problems(compat, "tensorrt", "10.8.0.1", (8, 0)) == [
        "version-compatible engine of TensorRT 10.9.0.34 needs TensorRT 10.x >= 10.9.0.34, "
        "this machine runs 10.8.0.1"
    ]
    assert compatibility_problems(compat, "tensorrt", "11.0.0.1", (7, 5))[1] == (
        "hardware-compatible (Ampere+) engine, this GPU is SM75"
    )
    assert compatibility_problems(_record(gpu=None), "tensorrt", "10.9.0.34", (8, 6)) == [
        "the build record names no GPU: rebuild on this machine"
    ]


def test_tensorrt_rtx_rules() -> None:
    rtx = _record(
        tensorrt_flavour="tensorrt_rtx", tensorrt_version="1.7.1.116", gpu=None, target_sms=["SM86"]
    )
    assert compatibility_problems(rtx, "tensorrt_rtx", "1.7.1.116", (8, 6)) == []
    assert compatibility_problems(rtx, "tensorrt_rtx", "1.7.1.116", (12, 0)) == [
        "built for SM86, this GPU is SM120"
    ]
    assert compatibility_problems(rtx, "tensorrt_rtx", "1.8.0.1", (8, 6)) == [
        "built with tensorrt_rtx 1.7.1.116, this machine runs 1.8.0.1"
    ]
    portable = dataclasses.replace(rtx, target_sms=[])
    assert compatibility_problems(portable, "tensorrt_rtx", "1.7.1.116", (8, 9)) == []
