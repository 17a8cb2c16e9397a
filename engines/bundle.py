"""Model bundles: a directory with ``manifest.json``, ``model.onnx`` and optional TensorRT engines.

The manifest makes a bundle self-describing, so the edge daemon needs nothing else (and never torch):

* ``schema_version`` (int) and ``producer`` (name, version), ``created``;
* ``model``: family (``masf``), part name and the full training config;
* ``input``: frame size, channels, channel order (RGB), layout and dtype of the graph input;
* ``preprocess``: the pinned :class:`~engines.preprocess.PreprocessSpec` (resize, colour, padding);
* ``normalization`` and ``backbone``: mean/std (applied inside the graph), channels, strides;
* ``calibration``: which inference path the ONNX implements (``path``: ``plain`` or ``tta``) and every
  path's calibration (``by_path``: threshold, rule, statistics); each threshold is stored exactly once;
  ``dropped`` (optional): good threshold images a review left out of the threshold (``masf-train drop``);
* ``data``: the training-data fingerprint and split sizes; ``validation``: metrics if given;
* ``source``: the run the bundle was exported from (directory, weights sha256);
* ``files``: every file of the bundle with its sha256 and size; ``export``: the export record;
* ``engines`` (optional): one entry per TensorRT engine (``file``, ``record``: its build record JSON,
  ``precision``, ``tensorrt``, ``target``, ``max_batch``), both files listed in ``files``;
* ``integrity``: ``{"algorithm": "sha256-canonical-json", "digest": ...}``, the sha256 of the canonical
  JSON of every other key (sorted keys, no whitespace, UTF-8). Since ``files`` lists every file's sha256,
  the digest identifies the whole bundle: it is the **bundle id** (:attr:`Bundle.bundle_id`). A manifest
  edited by hand (a threshold digit) no longer matches its digest and is refused on open.

An optional ``manifest.sig`` beside the manifest holds an ed25519 signature over the bundle id
(:mod:`engines.signing`); :meth:`Bundle.open` with ``trusted_keys`` refuses a bundle that is not signed
by one of them.

:func:`write_bundle` writes into a temporary sibling directory, then renames it into place, so a reader
never sees a half-written bundle; :func:`update_bundle` adds or replaces files and manifest sections the
same way (``masf-engine build`` adds engines with it). :func:`load_manifest` checks JSON, schema version
(upgrading older ones through :data:`UPGRADES`), required keys and types; :meth:`Bundle.open` also
verifies every file's size and sha256, and :meth:`Bundle.read_verified` returns a file's bytes checked
against the manifest in the same read (a backend loads the graph from these bytes, never by re-reading
the path: no check-then-use race). Every problem is a :class:`~engines.errors.BundleError` whose
one-line message says what to do. Torch-free (standard library and :mod:`engines.preprocess` only).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.errors import BundleError
from engines.preprocess import PreprocessSpec

__all__ = [
    "GRAPH_INPUTS",
    "GRAPH_OUTPUTS",
    "INTEGRITY_ALGORITHM",
    "MANIFEST_FILE",
    "SCHEMA_VERSION",
    "SIGNATURE_FILE",
    "UPGRADES",
    "Bundle",
    "file_record",
    "load_manifest",
    "manifest_digest",
    "seal_manifest",
    "sha256_file",
    "update_bundle",
    "upgrade_manifest",
    "validate_manifest",
    "verify_files",
    "write_bundle",
]

SCHEMA_VERSION = 2
"""2: one threshold per inference path (``calibration.by_path``), sealed manifest (``integrity``)."""
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
INTEGRITY_ALGORITHM = "sha256-canonical-json"
GRAPH_INPUTS = ("image", "valid")
"""Graph inputs: ``image`` uint8 ``[N, H, W, 3]`` RGB; ``valid`` uint8 ``[N, 1, H, W]`` (0 = padding)."""
GRAPH_OUTPUTS = ("anomaly_map", "score")
"""Graph outputs: ``anomaly_map`` float32 ``[N, 1, H, W]``; ``score`` float32 ``[N]`` (raw, no threshold)."""

_REEXPORT = "re-export with masf-engine export"

UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
"""Manifest upgrades: ``UPGRADES[v]`` turns a schema ``v`` manifest into a ``v + 1`` one (pure function).
Schema 1 has none: its manifests were not sealed, so nothing proves they are unchanged (re-export)."""

_Type = type | tuple[type, ...]
_REQUIRED: dict[str, _Type] = {
    "schema_version": int,
    "producer": dict,
    "producer.name": str,
    "producer.version": str,
    "created": str,
    "model": dict,
    "model.family": str,
    "model.part": str,
    "model.config": dict,
    "input": dict,
    "input.height": int,
    "input.width": int,
    "input.channels": int,
    "input.channel_order": str,
    "input.layout": str,
    "input.dtype": str,
    "preprocess": dict,
    "normalization": dict,
    "normalization.mean": list,
    "normalization.std": list,
    "backbone": dict,
    "backbone.name": str,
    "calibration": dict,
    "calibration.path": str,
    "calibration.by_path": dict,
    "data": dict,
    "data.train_fingerprint": str,
    "files": dict,
    "export": dict,
    "export.file": str,
    "export.format": str,
    "export.opset": int,
    "export.spectral_mode": str,
    "export.tta": bool,
    "export.inputs": list,
    "export.outputs": list,
    "integrity": dict,
    "integrity.algorithm": str,
    "integrity.digest": str,
}
_OPTIONAL: dict[str, _Type] = {"validation": (dict, type(None)), "source": dict, "engines": list}
_ENGINE_KEYS = ("file", "record", "precision")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _type_name(tp: _Type) -> str:
    names = [t.__name__ for t in (tp if isinstance(tp, tuple) else (tp,))]
    return " or ".join("null" if n == "NoneType" else n for n in names)


def _is_instance(value: Any, tp: _Type) -> bool:
    types = tp if isinstance(tp, tuple) else (tp,)
    if isinstance(value, bool) and bool not in types:
        return False  # bool is an int subclass: true/false is never a valid int or float here
    return isinstance(value, types)


def _lookup(doc: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | Path) -> dict[str, Any]:
    """``{"sha256": ..., "size": ...}`` of a file (the entry format of ``manifest["files"]``)."""
    return {"sha256": sha256_file(path), "size": Path(path).stat().st_size}


def _check_version(version: Any, where: str) -> int:
    """The schema version, if this code can read it (directly or through :data:`UPGRADES`)."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{where}: schema_version must be a positive integer, got {version!r}: {_REEXPORT}")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{where}: written by a newer masf-engine (schema_version {version}, this one reads up to "
            f"{SCHEMA_VERSION}): upgrade masf-edge on this machine"
        )
    for v in range(version, SCHEMA_VERSION):
        if v not in UPGRADES:
            raise BundleError(f"{where}: schema_version {v} can no longer be read: {_REEXPORT}")
    return version


def upgrade_manifest(doc: Mapping[str, Any], where: str = "bundle") -> dict[str, Any]:
    """Bring a manifest of an older schema version up to :data:`SCHEMA_VERSION` (pure: ``doc`` unchanged).

    Raises:
        BundleError: the version is not an integer, is newer than this code, or has no upgrade path.
    """
    out = copy.deepcopy(dict(doc))
    version = _check_version(out.get("schema_version"), where)
    while version < SCHEMA_VERSION:
        out = UPGRADES[version](out)
        version += 1
        out["schema_version"] = version
    return out


def _check_files(files: Mapping[str, Any], where: str) -> None:
    if not files:
        raise BundleError(f"{where}: manifest lists no files: {_REEXPORT}")
    for name, entry in files.items():
        if not name or name != Path(name).name or name in (".", "..", MANIFEST_FILE):
            raise BundleError(f"{where}: invalid file name {name!r} in the manifest: {_REEXPORT}")
        ok = (
            isinstance(entry, Mapping)
            and isinstance(entry.get("sha256"), str)
            and _SHA256.fullmatch(entry["sha256"]) is not None
            and _is_instance(entry.get("size"), int)
            and entry["size"] >= 0
        )
        if not ok:
            raise BundleError(f"{where}: files.{name} needs a sha256 (64 hex digits) and a size: {_REEXPORT}")


def validate_manifest(doc: Mapping[str, Any], where: str = "bundle") -> PreprocessSpec:
    """Check the required keys, their types and their consistency (current schema version only).

    Returns:
        The bundle's :class:`PreprocessSpec` (validated).

    Raises:
        BundleError: naming the first offending key.
    """
    for key, tp in _REQUIRED.items():
        found, value = _lookup(doc, key)
        if not found:
            raise BundleError(f"{where}: manifest is missing {key!r}: {_REEXPORT}")
        if not _is_instance(value, tp):
            raise BundleError(
                f"{where}: manifest {key} must be {_type_name(tp)}, got {type(value).__name__}: {_REEXPORT}"
            )
    for key, tp in _OPTIONAL.items():
        found, value = _lookup(doc, key)
        if found and not _is_instance(value, tp):
            raise BundleError(
                f"{where}: manifest {key} must be {_type_name(tp)}, got {type(value).__name__}: {_REEXPORT}"
            )
    if doc["schema_version"] != SCHEMA_VERSION:
        raise BundleError(f"{where}: expected schema_version {SCHEMA_VERSION}, got {doc['schema_version']}")
    try:
        spec = PreprocessSpec.from_dict(doc["preprocess"])
    except ValueError as err:
        raise BundleError(f"{where}: manifest {err}: {_REEXPORT}") from None
    inp = doc["input"]
    if inp["channel_order"] != "RGB" or inp.get("pixel_format", "RGB8") != "RGB8" or inp["dtype"] != "uint8":
        raise BundleError(
            f"{where}: input must be uint8 RGB (pixel format RGB8), got {inp['dtype']} "
            f"{inp['channel_order']} {inp.get('pixel_format')}: upgrade masf-edge or {_REEXPORT}"
        )
    if (inp["height"], inp["width"]) != spec.size:
        raise BundleError(
            f"{where}: input {inp['height']}x{inp['width']} does not match preprocess "
            f"{spec.height}x{spec.width}: {_REEXPORT}"
        )
    calib = doc["calibration"]
    if calib["path"] not in calib["by_path"]:
        raise BundleError(
            f"{where}: calibration.by_path has no entry for path {calib['path']!r}: {_REEXPORT}"
        )
    dup = sorted(k for k in ("threshold", "rule") if k in calib)
    if dup:
        raise BundleError(
            f"{where}: calibration.{dup[0]} must only be stored in calibration.by_path: {_REEXPORT}"
        )
    for path_name, entry in calib["by_path"].items():
        thr = entry.get("threshold") if isinstance(entry, Mapping) else None
        if not _is_instance(thr, (int, float)) or not math.isfinite(float(thr or 0.0)):
            raise BundleError(
                f"{where}: calibration.by_path.{path_name}.threshold must be a finite number, got {thr!r}: "
                f"{_REEXPORT}"
            )
    _check_files(doc["files"], where)
    if doc["export"]["file"] not in doc["files"]:
        raise BundleError(f"{where}: export.file {doc['export']['file']!r} is not in files: {_REEXPORT}")
    for k, entry in enumerate(doc.get("engines", [])):
        if not isinstance(entry, Mapping) or not all(isinstance(entry.get(key), str) for key in _ENGINE_KEYS):
            raise BundleError(
                f"{where}: engines[{k}] needs {list(_ENGINE_KEYS)}: rebuild with masf-engine build"
            )
        for key in ("file", "record"):
            if entry[key] not in doc["files"]:
                msg = f"{where}: engines[{k}].{key} {entry[key]!r} is not in files"
                raise BundleError(f"{msg}: rebuild it with masf-engine build")
    return spec


def manifest_digest(doc: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``doc`` without its ``integrity`` key: the bundle id."""
    body = {k: v for k, v in doc.items() if k != "integrity"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def seal_manifest(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` with its ``integrity`` section (re)computed."""
    out = {k: copy.deepcopy(v) for k, v in doc.items() if k != "integrity"}
    out["integrity"] = {"algorithm": INTEGRITY_ALGORITHM, "digest": manifest_digest(out)}
    return out


def _check_integrity(doc: Mapping[str, Any], where: str) -> None:
    sealed = doc["integrity"]
    if sealed["algorithm"] != INTEGRITY_ALGORITHM:
        raise BundleError(
            f"{where}: unknown integrity algorithm {sealed['algorithm']!r} (this version knows "
            f"{INTEGRITY_ALGORITHM!r}): upgrade masf-edge or {_REEXPORT}"
        )
    if manifest_digest(doc) != sealed["digest"]:
        raise BundleError(
            f"{where}: {MANIFEST_FILE} was changed after export (its integrity digest does not match): "
            f"restore the original bundle or {_REEXPORT}"
        )


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read, upgrade and validate the manifest of the bundle at ``path`` (directory or manifest file).

    Returns:
        The manifest as a dict at the current schema version.

    Raises:
        BundleError: missing bundle or manifest, unreadable or corrupt JSON, unsupported schema version,
            missing keys or wrong types, or a manifest changed after it was sealed.
    """
    path = Path(path)
    root = path.parent if path.name == MANIFEST_FILE and path.is_file() else path
    where = f"bundle {root}"
    if not root.is_dir():
        raise BundleError(f"{where}: not found (create one with: masf-engine export --run RUN --out {root})")
    mpath = root / MANIFEST_FILE
    if not mpath.is_file():
        raise BundleError(f"{where}: {MANIFEST_FILE} is missing (not a bundle, or incomplete): {_REEXPORT}")
    try:
        doc = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(
            f"{where}: {MANIFEST_FILE} is corrupt or truncated ({type(err).__name__}): {_REEXPORT}"
        ) from None
    if not isinstance(doc, dict):
        raise BundleError(f"{where}: {MANIFEST_FILE} is not a JSON object: {_REEXPORT}")
    _check_version(doc.get("schema_version"), where)  # version errors first
    sealed = doc.get("integrity")
    if not isinstance(sealed, dict) or not all(
        isinstance(sealed.get(k), str) for k in ("algorithm", "digest")
    ):
        raise BundleError(f"{where}: manifest has no valid 'integrity' seal: {_REEXPORT}")
    _check_integrity(doc, where)  # on the document as written, before any upgrade changes it
    doc = upgrade_manifest(doc, where)
    validate_manifest(doc, where)
    return doc


def verify_files(root: Path, manifest: Mapping[str, Any]) -> None:
    """Check that every file of ``manifest["files"]`` exists in ``root`` with its size and sha256.

    Raises:
        BundleError: a file is missing, has another size or another checksum.
    """
    where = f"bundle {root}"
    for name, entry in manifest["files"].items():
        fpath = root / name
        if not fpath.is_file():
            raise BundleError(f"{where}: {name} is missing: {_REEXPORT}")
        if fpath.stat().st_size != entry["size"] or sha256_file(fpath) != entry["sha256"]:
            raise BundleError(f"{where}: {name} checksum mismatch (file changed or truncated): {_REEXPORT}")


@dataclass(frozen=True)
class Bundle:
    """An opened, validated bundle. Build it with :meth:`open` (or :func:`write_bundle`).

    Attributes:
        path: the bundle directory.
        manifest: the validated manifest (current schema version).
    """

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(
        cls, path: str | Path, verify: bool = True, trusted_keys: Sequence[str | Path] | None = None
    ) -> Bundle:
        """Load and validate the manifest; with ``verify``, also check every file's size and sha256.

        Args:
            path: the bundle directory (or its manifest file).
            verify: check every file's size and sha256.
            trusted_keys: ed25519 public key files (PEM); when given, the bundle must carry a valid
                ``manifest.sig`` made by one of them (:mod:`engines.signing`).

        Raises:
            BundleError: see :func:`load_manifest` and :func:`verify_files`; an unsigned bundle or a bad
                signature when ``trusted_keys`` is given.
        """
        path = Path(path)
        root = path.parent if path.name == MANIFEST_FILE and path.is_file() else path
        manifest = load_manifest(root)
        if verify:
            verify_files(root, manifest)
        bundle = cls(root, manifest)
        if trusted_keys is not None:
            from engines.signing import verify_signature

            verify_signature(bundle, trusted_keys)
        return bundle

    @property
    def bundle_id(self) -> str:
        """The sealed manifest's sha256 (hex): identifies the bundle's manifest and every file."""
        return str(self.manifest["integrity"]["digest"])

    @property
    def model_version(self) -> str:
        """``model.version`` of the manifest when set (model store), else the first 12 digits of the id."""
        version = self.manifest["model"].get("version")
        return str(version) if version else self.bundle_id[:12]

    @property
    def part(self) -> str:
        """The part name."""
        return str(self.manifest["model"]["part"])

    def read_verified(self, name: str) -> bytes:
        """A bundle file's bytes, checked against the manifest's size and sha256 in the same read.

        Raises:
            BundleError: the file is not part of the bundle, is missing, or differs from the manifest.
        """
        entry = self.manifest["files"].get(name)
        if entry is None:
            raise BundleError(
                f"bundle {self.path}: has no file {name!r} (files: {sorted(self.manifest['files'])})"
            )
        try:
            data = (self.path / name).read_bytes()
        except OSError as err:
            raise BundleError(
                f"bundle {self.path}: cannot read {name} ({err.strerror}): {_REEXPORT}"
            ) from None
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise BundleError(
                f"bundle {self.path}: {name} checksum mismatch (file changed or truncated): {_REEXPORT}"
            )
        return data

    @property
    def preprocess(self) -> PreprocessSpec:
        """The pinned preprocessing."""
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def input_size(self) -> tuple[int, int]:
        """The graph's input ``(H, W)`` (one tile of a tiled bundle)."""
        return int(self.manifest["input"]["height"]), int(self.manifest["input"]["width"])

    @property
    def frame_size(self) -> tuple[int, int]:
        """The frame ``(H, W)`` an image is preprocessed into (what :meth:`Backend.infer` takes as a
        preprocessed batch); equal to :attr:`input_size` unless the bundle is tiled."""
        return self.preprocess.frame_size

    @property
    def calibration(self) -> dict[str, Any]:
        """The calibration of the exported inference path (``threshold``, ``rule``, statistics)."""
        calib = self.manifest["calibration"]
        return dict(calib["by_path"][calib["path"]])

    @property
    def threshold(self) -> float:
        """Calibrated threshold of the exported inference path (FAIL when ``score >= threshold``)."""
        return float(self.calibration["threshold"])

    @property
    def onnx_path(self) -> Path:
        """Path of the ONNX graph."""
        return self.path / self.manifest["export"]["file"]

    @property
    def engines(self) -> list[dict[str, Any]]:
        """The TensorRT engine entries of the manifest (empty when none was built)."""
        return list(self.manifest.get("engines", []))

    def file(self, name: str) -> Path:
        """Path of a file listed in the manifest.

        Raises:
            BundleError: ``name`` is not part of the bundle.
        """
        if name not in self.manifest["files"]:
            raise BundleError(
                f"bundle {self.path}: has no file {name!r} (files: {sorted(self.manifest['files'])})"
            )
        return self.path / name


def write_bundle(
    out: str | Path,
    manifest: Mapping[str, Any],
    files: Mapping[str, str | Path | bytes],
    overwrite: bool = False,
) -> Bundle:
    """Write a bundle atomically: files and manifest go into a temporary sibling, which is renamed to ``out``.

    Args:
        out: bundle directory to create.
        manifest: every manifest section except ``files`` and ``integrity`` (both made here). A signature
            of an earlier version of the bundle is not carried over: sign the new one.
        files: bundle file name -> source path (copied) or content (bytes).
        overwrite: replace an existing bundle at ``out`` (the old one stays complete until the rename).

    Returns:
        The written bundle, opened and verified.

    Raises:
        BundleError: ``out`` exists (without ``overwrite``) or is not a bundle, or the manifest is invalid
            (nothing is written then).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise BundleError(f"bundle {out}: already exists: choose another --out or pass --overwrite")
    if out.exists() and not (out / MANIFEST_FILE).is_file():
        raise BundleError(f"bundle {out}: exists and is not a bundle: refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    old: Path | None = None
    try:
        records: dict[str, Any] = {}
        for name, src in files.items():
            if name != Path(name).name or name == MANIFEST_FILE:
                raise BundleError(f"bundle {out}: invalid file name {name!r}")
            dst = tmp / name
            if isinstance(src, bytes):
                dst.write_bytes(src)
            else:
                shutil.copyfile(src, dst)
            records[name] = file_record(dst)
        doc = {**copy.deepcopy(dict(manifest)), "schema_version": SCHEMA_VERSION, "files": records}
        doc.pop("integrity", None)
        doc = seal_manifest(doc)
        validate_manifest(doc, f"bundle {out}")
        with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "bundle")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old / "bundle", out)  # put the previous bundle back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return Bundle.open(out)


def update_bundle(
    path: str | Path,
    files: Mapping[str, str | Path | bytes],
    sections: Mapping[str, Any],
    remove: Sequence[str] = (),
) -> Bundle:
    """Add or replace files and manifest sections of a bundle, atomically (through :func:`write_bundle`).

    The bundle is verified first; every file it keeps is copied with the new ones into a temporary
    sibling that replaces it, so a reader sees the old or the new bundle, never a mix.

    Args:
        path: the bundle directory.
        files: bundle file name -> source path or bytes (added or replacing a file of the same name).
        sections: top-level manifest keys to set (e.g. ``{"engines": [...]}``).
        remove: file names to drop from the bundle.

    Returns:
        The updated bundle, opened and verified.

    Raises:
        BundleError: the bundle is invalid, a section would make the manifest invalid, or a name is bad.
    """
    current = Bundle.open(path)
    for key in ("schema_version", "files", "integrity"):
        if key in sections:
            raise BundleError(f"bundle {current.path}: {key!r} is managed by the bundle writer")
    kept: dict[str, str | Path | bytes] = {
        name: current.path / name for name in current.manifest["files"] if name not in remove
    }
    kept.update(files)
    manifest = {**current.manifest, **copy.deepcopy(dict(sections))}
    manifest.pop("files", None)
    return write_bundle(current.path, manifest, kept, overwrite=True)
