"""Tests for engines.signing: ed25519 signatures over the bundle id, and Bundle.open(trusted_keys=...)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from edge_support import make_tiny_bundle

from engines.bundle import SIGNATURE_FILE, Bundle, update_bundle
from engines.cli import main as engine_main
from engines.errors import BundleError, EngineError
from engines.signing import make_signing_key, sign_bundle, verify_signature


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return make_signing_key(tmp_path / "keys", "factory")


def test_keys_are_written_once_with_a_private_mode(keys: tuple[Path, Path], tmp_path: Path) -> None:
    priv, pub = keys
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in priv.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    with pytest.raises(EngineError, match=r"exists: choose another --name"):
        make_signing_key(tmp_path / "keys", "factory")


def test_a_signed_bundle_opens_with_its_key_not_another(keys: tuple[Path, Path], tmp_path: Path) -> None:
    priv, pub = keys
    bundle = make_tiny_bundle(tmp_path / "b")
    record = sign_bundle(bundle.path, priv)
    assert record["bundle_id"] == bundle.bundle_id and record["algorithm"] == "ed25519"
    opened = Bundle.open(bundle.path, trusted_keys=[pub])
    assert verify_signature(opened, [pub]) == record["key_id"]
    _, other_pub = make_signing_key(tmp_path / "keys", "intruder")
    with pytest.raises(BundleError, match=r"not among the trusted keys"):
        Bundle.open(bundle.path, trusted_keys=[other_pub])


def test_unsigned_altered_or_stale_signatures_are_refused(keys: tuple[Path, Path], tmp_path: Path) -> None:
    priv, pub = keys
    bundle = make_tiny_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match=r"not signed, and only signed bundles are accepted"):
        Bundle.open(bundle.path, trusted_keys=[pub])
    sign_bundle(bundle.path, priv)
    sig = bundle.path / SIGNATURE_FILE
    doc = json.loads(sig.read_text())
    forged = bytearray(__import__("base64").b64decode(doc["signature"]))
    forged[0] ^= 1
    doc["signature"] = __import__("base64").b64encode(bytes(forged)).decode()
    sig.write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"does not verify"):
        Bundle.open(bundle.path, trusted_keys=[pub])
    sign_bundle(bundle.path, priv)
    update_bundle(bundle.path, {"extra.txt": b"x"}, {})  # a new version of the bundle
    with pytest.raises(BundleError, match=r"not signed|another version"):
        Bundle.open(bundle.path, trusted_keys=[pub])
    Bundle.open(bundle.path)  # still a valid bundle without signature checks


def test_cli_keygen_sign_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_tiny_bundle(tmp_path / "b")
    assert engine_main(["keygen", "--out", str(tmp_path / "k"), "--name", "line"]) == 0
    pub = tmp_path / "k" / "line.pub.pem"
    assert engine_main(["verify", "--bundle", str(bundle.path), "--trusted-key", str(pub)]) == 2
    assert "not signed" in capsys.readouterr().err
    key = str(tmp_path / "k" / "line.key.pem")
    assert engine_main(["sign", "--bundle", str(bundle.path), "--key", key]) == 0
    assert engine_main(["verify", "--bundle", str(bundle.path), "--trusted-key", str(pub)]) == 0
    assert "signature OK" in capsys.readouterr().out
    assert engine_main(["sign", "--bundle", str(bundle.path), "--key", str(pub)]) == 2
    assert "is not a PEM private key" in capsys.readouterr().err
