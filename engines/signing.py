"""ed25519 signatures of bundles: who made this model, and was it changed since.

The signature covers the bundle id (:attr:`engines.bundle.Bundle.bundle_id`, the sha256 of the sealed
manifest, which lists every file's sha256), so it vouches for every byte of the bundle. It lives in
``manifest.sig`` beside the manifest (not in ``files``: it is made after them)::

    {"algorithm": "ed25519", "key_id": "<first 16 hex of sha256(raw public key)>",
     "bundle_id": "<hex>", "signature": "<base64 of the 64-byte signature>"}

Keys are PEM files: the private key (PKCS8, file mode 0600) stays with whoever exports models; the
public key goes to every edge box whose config sets ``security.require_signed_bundles``. Uses the
``cryptography`` package (extra ``edge``); torch-free.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engines.bundle import SIGNATURE_FILE, Bundle
from engines.errors import BundleError, EngineError

__all__ = ["key_id", "make_signing_key", "sign_bundle", "verify_signature"]

_ALGORITHM = "ed25519"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise EngineError(
            "bundle signatures need the cryptography package: pip install 'masf-edge[edge]'"
        ) from None
    return serialization, ed25519


def key_id(public_key: Any) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte public key."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def make_signing_key(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write a new ed25519 key pair: ``<name>.key.pem`` (private, mode 0600) and ``<name>.pub.pem``.

    Raises:
        EngineError: the files exist already (never overwritten) or cannot be written.
    """
    serialization, ed25519 = _crypto()
    out = Path(out_dir)
    priv_path, pub_path = out / f"{name}.key.pem", out / f"{name}.pub.pem"
    for p in (priv_path, pub_path):
        if p.exists():
            raise EngineError(f"{p} exists: choose another --name or folder (keys are never overwritten)")
    key = ed25519.Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(priv)
        pub_path.write_bytes(pub)
    except OSError as err:
        raise EngineError(f"cannot write keys to {out} ({err.strerror}): choose a writable folder") from None
    return priv_path, pub_path


def _load_pem(path: str | Path, private: bool) -> Any:
    serialization, ed25519 = _crypto()
    kind = "private" if private else "public"
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise EngineError(f"cannot read the {kind} key {path} ({err.strerror}): check the path") from None
    try:
        key = (
            serialization.load_pem_private_key(data, password=None)
            if private
            else serialization.load_pem_public_key(data)
        )
    except (ValueError, TypeError):
        raise EngineError(f"{path} is not a PEM {kind} key: make one with masf-engine keygen") from None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise EngineError(f"{path} is not an ed25519 {kind} key: make one with masf-engine keygen")
    return key


def sign_bundle(bundle_path: str | Path, key_file: str | Path) -> dict[str, str]:
    """Sign the (verified) bundle with the private key in ``key_file``; writes ``manifest.sig`` atomically.

    Returns:
        The signature record.

    Raises:
        BundleError: the bundle is invalid. EngineError: the key cannot be read.
    """
    bundle = Bundle.open(bundle_path)
    key = _load_pem(key_file, private=True)
    record = {
        "algorithm": _ALGORITHM,
        "key_id": key_id(key.public_key()),
        "bundle_id": bundle.bundle_id,
        "signature": base64.b64encode(key.sign(bundle.bundle_id.encode("ascii"))).decode("ascii"),
    }
    tmp = bundle.path / f".{SIGNATURE_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, bundle.path / SIGNATURE_FILE)
    return record


def verify_signature(bundle: Bundle, trusted_keys: Sequence[str | Path]) -> str:
    """Check that ``bundle`` carries a valid signature by one of ``trusted_keys`` (public PEM files).

    Returns:
        The key id of the key that signed it.

    Raises:
        BundleError: no trusted keys, no or unreadable ``manifest.sig``, a signature of another bundle,
            by an untrusted key, or that does not verify.
    """
    from cryptography.exceptions import InvalidSignature

    where = f"bundle {bundle.path}"
    if not trusted_keys:
        raise BundleError(f"{where}: no trusted public keys configured to check its signature")
    keys = {key_id(k): k for k in (_load_pem(p, private=False) for p in trusted_keys)}
    sig_path = bundle.path / SIGNATURE_FILE
    try:
        record = json.loads(sig_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(
            f"{where}: not signed, and only signed bundles are accepted: sign it with masf-engine sign "
            "--bundle B --key KEY.pem"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise BundleError(f"{where}: {SIGNATURE_FILE} is unreadable: sign the bundle again") from None
    if not isinstance(record, dict) or record.get("algorithm") != _ALGORITHM:
        raise BundleError(
            f"{where}: {SIGNATURE_FILE} is not an {_ALGORITHM} signature: sign the bundle again"
        )
    if record.get("bundle_id") != bundle.bundle_id:
        raise BundleError(f"{where}: the signature is for another version of this bundle: sign it again")
    kid = str(record.get("key_id"))
    if kid not in keys:
        raise BundleError(
            f"{where}: signed by key {kid}, which is not among the trusted keys {sorted(keys)}: add its "
            "public key to security.trusted_keys or sign with a trusted key"
        )
    try:
        keys[kid].verify(
            base64.b64decode(str(record.get("signature")), validate=True), bundle.bundle_id.encode()
        )
    except (InvalidSignature, ValueError):
        raise BundleError(
            f"{where}: the signature does not verify: the bundle or its signature was altered"
        ) from None
    return kid
