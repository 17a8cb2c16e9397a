"""Tests for engines.bundle: manifest schema, atomic writing, checksums and clear errors (torch-free)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import engines.bundle as bundle_mod
from engines.bundle import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    Bundle,
    load_manifest,
    manifest_digest,
    update_bundle,
    write_bundle,
)
from engines.errors import BundleError, EngineError
from engines.preprocess import PreprocessSpec

ONNX_BYTES = b"not really onnx, but bytes with a checksum" * 10


def _manifest() -> dict[str, Any]:
    spec = PreprocessSpec(64, 96, "letterbox", "rgb")
    return {
        "producer": {"name": "masf-engine", "version": "0.1.0"},
        "created": "2026-01-01T00:00:00+00:00",
        "model": {"family": "masf", "part": "widget", "config": {"seed": 0}},
        "input": {
            "height": 64,
            "width": 96,
            "channels": 3,
            "channel_order": "RGB",
            "layout": "NHWC",
            "dtype": "uint8",
        },
        "preprocess": spec.to_dict(),
        "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
        "backbone": {"name": "tf_efficientnet_lite0"},
        "calibration": {
            "path": "plain",
            "by_path": {"plain": {"threshold": 1.5, "rule": "conformal"}, "tta": {"threshold": 2.0}},
        },
        "data": {"train_fingerprint": "ab" * 32},
        "validation": None,
        "export": {
            "file": "model.onnx",
            "format": "onnx",
            "opset": 18,
            "spectral_mode": "gemm",
            "tta": False,
            "inputs": [],
            "outputs": [],
        },
    }


@pytest.fixture
def written(tmp_path: Path) -> Bundle:
    return write_bundle(tmp_path / "b", _manifest(), {"model.onnx": ONNX_BYTES})


def _rewrite_manifest(root: Path, change: Any, reseal: bool = True) -> None:
    """Change the manifest on disk; ``reseal`` recomputes its integrity digest (as a tool would, so the
    change reaches validation), else the edit is a hand edit that the seal must catch."""
    doc = json.loads((root / MANIFEST_FILE).read_text())
    change(doc)
    if reseal and isinstance(doc, dict) and isinstance(doc.get("integrity"), dict):
        doc["integrity"]["digest"] = manifest_digest(doc)
    (root / MANIFEST_FILE).write_text(json.dumps(doc))


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_write_and_open_roundtrip(written: Bundle, tmp_path: Path) -> None:
    root = tmp_path / "b"
    assert sorted(p.name for p in root.iterdir()) == [MANIFEST_FILE, "model.onnx"]
    doc = json.loads((root / MANIFEST_FILE).read_text())
    assert doc["schema_version"] == SCHEMA_VERSION and isinstance(doc["schema_version"], int)
    assert doc["files"] == {
        "model.onnx": {"sha256": hashlib.sha256(ONNX_BYTES).hexdigest(), "size": len(ONNX_BYTES)}
    }
    opened = Bundle.open(root)
    assert opened.manifest == written.manifest == doc
    assert opened.preprocess == PreprocessSpec(64, 96, "letterbox", "rgb")
    assert opened.input_size == (64, 96)
    assert opened.threshold == 1.5
    assert opened.onnx_path == root / "model.onnx"
    assert opened.file("model.onnx").read_bytes() == ONNX_BYTES
    assert Bundle.open(root / MANIFEST_FILE).path == root  # the manifest path works too
    assert load_manifest(root) == doc
    assert _leftovers(tmp_path) == []  # temporary directories are gone
    with pytest.raises(BundleError, match=r"has no file 'engine.plan'"):
        opened.file("engine.plan")


def test_bundle_error_is_a_torch_free_engine_error() -> None:
    assert issubclass(BundleError, EngineError)
    assert not issubclass(EngineError, (ValueError, RuntimeError))


def test_write_copies_files_from_paths(tmp_path: Path) -> None:
    src = tmp_path / "exported.onnx"
    src.write_bytes(ONNX_BYTES)
    b = write_bundle(tmp_path / "b", _manifest(), {"model.onnx": src})
    assert b.onnx_path.read_bytes() == ONNX_BYTES
    assert src.exists()


def test_existing_bundle_needs_overwrite(written: Bundle, tmp_path: Path) -> None:
    root = tmp_path / "b"
    with pytest.raises(BundleError, match=r"already exists: choose another --out or pass --overwrite"):
        write_bundle(root, _manifest(), {"model.onnx": b"other"})
    assert Bundle.open(root).onnx_path.read_bytes() == ONNX_BYTES  # untouched
    new = write_bundle(root, _manifest(), {"model.onnx": b"other"}, overwrite=True)
    assert new.onnx_path.read_bytes() == b"other"
    assert _leftovers(tmp_path) == []


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("x")
    with pytest.raises(BundleError, match=r"is not a bundle"):
        write_bundle(tmp_path / "data", _manifest(), {"model.onnx": ONNX_BYTES}, overwrite=True)
    assert (tmp_path / "data" / "keep.txt").exists()


def test_invalid_manifest_writes_nothing(tmp_path: Path) -> None:
    bad = _manifest()
    del bad["calibration"]["by_path"]["plain"]["threshold"]
    with pytest.raises(BundleError, match=r"calibration.by_path.plain.threshold must be a finite number"):
        write_bundle(tmp_path / "b", bad, {"model.onnx": ONNX_BYTES})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BundleError, match=r"export.file 'model.onnx' is not in files"):
        write_bundle(tmp_path / "b", _manifest(), {"other.onnx": ONNX_BYTES})
    with pytest.raises(BundleError, match=r"invalid file name"):
        write_bundle(tmp_path / "b", _manifest(), {"../model.onnx": ONNX_BYTES})
    assert list(tmp_path.iterdir()) == []


def test_missing_bundle_or_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"not found \(create one with: masf-engine export"):
        Bundle.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"manifest.json is missing"):
        Bundle.open(tmp_path / "empty")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "list"])
def test_corrupt_or_truncated_manifest(written: Bundle, damage: str) -> None:
    mpath = written.path / MANIFEST_FILE
    text = mpath.read_text()
    mpath.write_text(
        {"garbage": "{not json", "truncated": text[: len(text) // 2], "empty": "", "list": "[1, 2]"}[damage]
    )
    expected = "is not a JSON object" if damage == "list" else "manifest.json is corrupt or truncated"
    with pytest.raises(BundleError, match=expected) as info:
        Bundle.open(written.path)
    assert str(info.value).startswith(f"bundle {written.path}: ")
    assert str(info.value).endswith("re-export with masf-engine export")
    assert "\n" not in str(info.value)


def test_missing_model_file(written: Bundle) -> None:
    written.onnx_path.unlink()
    with pytest.raises(BundleError, match=r"model.onnx is missing: re-export with masf-engine export"):
        Bundle.open(written.path)
    Bundle.open(written.path, verify=False)  # manifest-only reads still work (masf-engine info)


@pytest.mark.parametrize("damage", ["flipped", "truncated", "appended"])
def test_checksum_mismatch(written: Bundle, damage: str) -> None:
    data = bytearray(ONNX_BYTES)
    if damage == "flipped":
        data[10] ^= 0xFF
    elif damage == "truncated":
        data = data[:-7]
    else:
        data += b"\0"
    written.onnx_path.write_bytes(bytes(data))
    msg = (
        f"bundle {written.path}: model.onnx checksum mismatch (file changed or truncated): "
        "re-export with masf-engine export"
    )
    with pytest.raises(BundleError) as info:
        Bundle.open(written.path)
    assert str(info.value) == msg


def test_newer_schema_is_refused(written: Bundle) -> None:
    _rewrite_manifest(written.path, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(BundleError, match=r"newer masf-engine .*upgrade masf-edge"):
        Bundle.open(written.path)


@pytest.mark.parametrize("version", ["1", 1.0, True, 0, None])
def test_schema_version_must_be_a_positive_int(written: Bundle, version: Any) -> None:
    _rewrite_manifest(written.path, lambda d: d.update(schema_version=version))
    with pytest.raises(BundleError, match=r"schema_version must be a positive integer"):
        Bundle.open(written.path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("input.height", "64", "input.height must be int, got str"),
        ("input.height", True, "input.height must be int, got bool"),
        ("calibration.by_path.plain.threshold", "1.5", "by_path.plain.threshold must be a finite number"),
        ("calibration.by_path.plain.threshold", float("nan"), "by_path.plain.threshold must be a finite"),
        ("calibration.threshold", 1.5, "calibration.threshold must only be stored in calibration.by_path"),
        ("integrity.algorithm", "md5", "unknown integrity algorithm 'md5'"),
        ("export.tta", 0, "export.tta must be bool"),
        ("validation", [1], "validation must be dict or null"),
        ("input.width", 64, "input 64x64 does not match preprocess 64x96"),
        ("calibration.path", "tta2", "no entry for path 'tta2'"),
        ("preprocess.resize", "crop", "preprocess.resize must be"),
    ],
)
def test_wrong_types_and_inconsistent_values(written: Bundle, key: str, value: Any, message: str) -> None:
    def change(doc: dict[str, Any]) -> None:
        *parents, leaf = key.split(".")
        node = doc
        for p in parents:
            node = node[p]
        node[leaf] = value

    _rewrite_manifest(written.path, change)
    with pytest.raises(BundleError, match=message):
        Bundle.open(written.path)


def test_bad_file_entries(written: Bundle) -> None:
    _rewrite_manifest(written.path, lambda d: d["files"].update({"../escape": d["files"]["model.onnx"]}))
    with pytest.raises(BundleError, match=r"invalid file name '../escape'"):
        Bundle.open(written.path)
    _rewrite_manifest(written.path, lambda d: d["files"].pop("../escape"))
    _rewrite_manifest(written.path, lambda d: d["files"]["model.onnx"].update(sha256="xyz"))
    with pytest.raises(BundleError, match=r"files.model.onnx needs a sha256"):
        Bundle.open(written.path)


def test_upgrade_hook_brings_old_manifests_forward(written: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """A schema bump registers a pure upgrade function; old bundles are read through it."""
    before = (written.path / MANIFEST_FILE).read_text()
    monkeypatch.setattr(bundle_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(BundleError, match=f"schema_version {SCHEMA_VERSION} can no longer be read"):
        Bundle.open(written.path)

    def upgrade(doc: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(doc)
        out["model"]["part_label"] = out["model"]["part"].upper()
        return out

    monkeypatch.setitem(bundle_mod.UPGRADES, SCHEMA_VERSION, upgrade)
    opened = Bundle.open(written.path)
    assert opened.manifest["schema_version"] == SCHEMA_VERSION + 1
    assert opened.manifest["model"]["part_label"] == "WIDGET"
    assert (written.path / MANIFEST_FILE).read_text() == before  # reading never rewrites the bundle


def test_update_bundle_adds_files_and_sections_atomically(written: Bundle, tmp_path: Path) -> None:
    engine = {"file": "e.engine", "record": "e.build.json", "precision": "fp16"}
    updated = update_bundle(
        written.path, {"e.engine": b"engine bytes", "e.build.json": b"{}"}, {"engines": [engine]}
    )
    assert sorted(updated.manifest["files"]) == ["e.build.json", "e.engine", "model.onnx"]
    assert updated.manifest["files"]["e.engine"]["sha256"] == hashlib.sha256(b"engine bytes").hexdigest()
    assert updated.engines == [engine] and Bundle.open(written.path).engines == [engine]
    assert updated.manifest["model"] == written.manifest["model"]  # the rest is kept
    assert (written.path / "model.onnx").read_bytes() == ONNX_BYTES
    assert _leftovers(tmp_path) == []
    # replacing a file; removing a file that an engine entry still names is refused (nothing written)
    update_bundle(written.path, {"e.engine": b"rebuilt"}, {})
    with pytest.raises(BundleError, match=r"engines\[0\].record 'e.build.json' is not in files"):
        update_bundle(written.path, {}, {}, remove=["e.build.json"])
    assert Bundle.open(written.path).file("e.engine").read_bytes() == b"rebuilt"
    with pytest.raises(BundleError, match=r"engines\[0\] needs \['file', 'record', 'precision'\]"):
        update_bundle(written.path, {}, {"engines": [{"file": "e.engine"}]})
    with pytest.raises(BundleError, match="'files' is managed by the bundle writer"):
        update_bundle(written.path, {}, {"files": {}})
    assert Bundle.open(written.path).engines == [engine]  # failed updates changed nothing


def test_bundle_id_is_the_sealed_manifest_digest(written: Bundle) -> None:
    doc = json.loads((written.path / MANIFEST_FILE).read_text())
    assert doc["integrity"]["algorithm"] == "sha256-canonical-json"
    assert written.bundle_id == doc["integrity"]["digest"] == manifest_digest(doc)
    assert len(written.bundle_id) == 64 and written.model_version == written.bundle_id[:12]
    assert written.calibration == {"threshold": 1.5, "rule": "conformal"}
    other = update_bundle(written.path, {"model.onnx": b"other graph"}, {})
    assert other.bundle_id != written.bundle_id  # a changed file changes the id (files are in the manifest)


@pytest.mark.parametrize("edit", ["threshold", "path", "whitespace_only"])
def test_a_hand_edited_manifest_is_refused(written: Bundle, edit: str) -> None:
    """Editing the threshold from 1.5 to 9.9 would make every defective part PASS: the seal catches it."""
    mpath = written.path / MANIFEST_FILE
    if edit == "whitespace_only":  # formatting is not content: still the same bundle
        mpath.write_text(json.dumps(json.loads(mpath.read_text()), indent=4))
        assert Bundle.open(written.path).bundle_id == written.bundle_id
        return
    change = {
        "threshold": lambda d: d["calibration"]["by_path"]["plain"].update(threshold=9.9),
        "path": lambda d: d["calibration"].update(path="tta"),
    }[edit]
    _rewrite_manifest(written.path, change, reseal=False)
    with pytest.raises(BundleError, match=r"manifest.json was changed after export") as info:
        Bundle.open(written.path)
    assert "\n" not in str(info.value)


def test_read_verified_returns_checked_bytes(written: Bundle) -> None:
    assert written.read_verified("model.onnx") == ONNX_BYTES
    written.onnx_path.write_bytes(ONNX_BYTES[:-1] + b"!")  # swapped after open: never returned
    with pytest.raises(BundleError, match=r"model.onnx checksum mismatch"):
        written.read_verified("model.onnx")
    with pytest.raises(BundleError, match=r"has no file 'x.onnx'"):
        written.read_verified("x.onnx")


def test_schema_1_manifests_are_refused_with_what_to_do(written: Bundle) -> None:
    _rewrite_manifest(written.path, lambda d: d.update(schema_version=1))
    with pytest.raises(BundleError, match=r"schema_version 1 can no longer be read: re-export"):
        Bundle.open(written.path)
