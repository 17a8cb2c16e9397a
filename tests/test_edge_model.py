"""Tests for edge.model: a model is loaded whole (verified, signed when required, warmed up) or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from edge_support import make_tiny_bundle, part_image

from edge.model import load_model
from engines.bundle import MANIFEST_FILE
from engines.errors import BackendError, BundleError
from engines.signing import make_signing_key, sign_bundle


def test_load_warm_up_and_facts(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "b", threshold=1.5)
    model = load_model(bundle.path)
    assert model.threshold == 1.5 and model.part == "widget" and model.bundle_id == bundle.bundle_id
    assert model.pixel_threshold == pytest.approx(1.35) and model.heat_lo == 0.05 and model.heat_hi == 2.25
    facts = model.describe()
    assert facts["backend"] == "onnxruntime" and facts["input"] == [64, 64]
    scores = model.backend.infer([part_image(True)])
    assert scores.score[0] > 1.5
    model.close()


def test_signed_bundles_are_required_when_configured(tmp_path: Path) -> None:
    priv, pub = make_signing_key(tmp_path / "k", "line")
    bundle = make_tiny_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="not signed"):
        load_model(bundle.path, trusted_keys=[str(pub)])
    sign_bundle(bundle.path, priv)
    load_model(bundle.path, trusted_keys=[str(pub)]).close()


def test_a_changed_threshold_is_refused(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "b", threshold=3.41)
    doc = json.loads((bundle.path / MANIFEST_FILE).read_text())
    doc["calibration"]["by_path"]["plain"]["threshold"] = 9.9  # every defective part would PASS
    (bundle.path / MANIFEST_FILE).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="changed after export"):
        load_model(bundle.path)


def test_no_silent_fallback_to_another_backend(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "b")
    with pytest.raises(BackendError) as info:
        load_model(bundle.path, backend="tensorrt")
    assert "\n" not in str(info.value) and ("tensorrt" in str(info.value).lower())
    with pytest.raises(BackendError, match="unknown backend 'openvino'"):
        load_model(bundle.path, backend="openvino")
