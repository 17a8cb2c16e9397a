"""The model store of a line computer: every part's bundle versions, which one is live, and their history.

Layout under ``store.dir`` (one folder, writable by the service: ``ReadWritePaths`` in the unit)::

    parts/<part>/v0001/ ...             complete, verified bundles (never modified once added)
    parts/<part>/current -> v0003       symlink, replaced atomically (a new link renamed over it)
    parts/<part>/history.jsonl          append-only: collected, imported, trained, validated, promoted, ...
    parts/<part>/images/good/*.png      known-good training images (collected from a camera, imported)
    parts/<part>/images/defects/*.png   confirmed defects (validation only, never trained on)
    parts/<part>/.incoming-<version>/   a version being made; renamed into place when complete

A version appears in the store only by a rename of a complete, verified bundle, so a crash or a restart
during training leaves at most an ``.incoming-*`` folder, which :meth:`ModelStore.recover` removes and
reports. The last ``keep`` versions are kept; ``current`` and the version promoted before it are never
deleted. Camera configs name a part's live model as ``bundle: store:<part>``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from engines.bundle import Bundle
from engines.errors import BundleError

__all__ = ["STORE_PREFIX", "ModelStore", "check_part_name"]

log = logging.getLogger(__name__)

STORE_PREFIX = "store:"
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_VERSION = re.compile(r"v(\d{4,})")


def check_part_name(part: Any) -> str:
    """``part`` if it is a safe folder name.

    Raises:
        EdgeError: empty, too long, or with path characters (``/``, ``..``, spaces, ...).
    """
    if not isinstance(part, str) or _PART.fullmatch(part) is None or ".." in part:
        raise EdgeError(
            f"invalid part name {part!r}: use letters, digits, '_', '.' or '-' (at most 64, no '/' or '..')"
        )
    return part


class ModelStore:
    """The store at ``root`` (created if missing).

    Args:
        root: the store folder.
        keep: versions kept per part (at least 2; ``current`` and the previous one always stay).

    Raises:
        EdgeError: the folder cannot be created or written.
    """

    def __init__(self, root: str | Path, keep: int = 5) -> None:
        self.root = Path(root)
        self.keep = max(2, int(keep))
        self._lock = threading.RLock()
        try:
            (self.root / "parts").mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise EdgeError(
                f"model store {self.root}: not writable ({err.strerror}): fix store.dir"
            ) from None

    # ------------------------------------------------------------------------------ paths

    def part_dir(self, part: str) -> Path:
        return self.root / "parts" / check_part_name(part)

    def images_dir(self, part: str, kind: str = "good") -> Path:
        if kind not in ("good", "defects"):
            raise EdgeError(f"image kind must be 'good' or 'defects', got {kind!r}")
        path = self.part_dir(part) / "images" / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    def current_path(self, part: str) -> Path:
        """``parts/<part>/current`` (what a camera with ``bundle: store:<part>`` loads)."""
        return self.part_dir(part) / "current"

    def resolve(self, bundle: str) -> str:
        """A camera's ``bundle`` value: ``store:<part>`` -> the part's ``current`` path; others unchanged."""
        if bundle.startswith(STORE_PREFIX):
            return str(self.current_path(bundle[len(STORE_PREFIX) :]))
        return bundle

    # ------------------------------------------------------------------------------ reading

    def parts(self) -> list[str]:
        return sorted(
            p.name for p in (self.root / "parts").iterdir() if p.is_dir() and _PART.fullmatch(p.name)
        )

    def versions(self, part: str) -> list[str]:
        """Complete versions, oldest first."""
        folder = self.part_dir(part)
        if not folder.is_dir():
            return []
        found = [
            p.name
            for p in folder.iterdir()
            if p.is_dir() and not p.is_symlink() and _VERSION.fullmatch(p.name)
        ]
        return sorted(found, key=lambda v: int(v[1:]))

    def current(self, part: str) -> str | None:
        link = self.current_path(part)
        try:
            target = os.readlink(link)
        except OSError:
            return None
        return Path(target).name

    def history(self, part: str) -> list[dict[str, Any]]:
        path = self.part_dir(part) / "history.jsonl"
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line after a power cut: skipped
                continue
        return out

    def previous(self, part: str) -> str | None:
        """The version that was live before ``current`` (from the promotion history)."""
        current = self.current(part)
        live = [e["version"] for e in self.history(part) if e.get("event") in ("promoted", "rolled_back")]
        for version in reversed(live):
            if version != current and version in self.versions(part):
                return str(version)
        return None

    def describe(self, part: str) -> dict[str, Any]:
        return {
            "part": part,
            "current": self.current(part),
            "previous": self.previous(part),
            "versions": self.versions(part),
            "images": {
                kind: len(list((self.part_dir(part) / "images" / kind).glob("*.png")))
                if (self.part_dir(part) / "images" / kind).is_dir()
                else 0
                for kind in ("good", "defects")
            },
        }

    # ------------------------------------------------------------------------------ writing

    def record(self, part: str, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event to the part's history (one JSON line, flushed and fsynced)."""
        entry = {"time": round(time.time(), 3), "event": event, **fields}
        path = self.part_dir(part) / "history.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return entry

    def reserve(self, part: str) -> tuple[str, Path]:
        """A new version name and its ``.incoming-<version>`` folder (created empty)."""
        with self._lock:
            folder = self.part_dir(part)
            folder.mkdir(parents=True, exist_ok=True)
            numbers = [int(v[1:]) for v in self.versions(part)]
            numbers += [
                int(p.name.split("-v")[1])
                for p in folder.glob(".incoming-v*")
                if p.name.split("-v")[1].isdigit()
            ]
            version = f"v{max(numbers, default=0) + 1:04d}"
            incoming = folder / f".incoming-{version}"
            incoming.mkdir()
            return version, incoming

    def add(self, part: str, version: str, bundle_dir: Path, **fields: Any) -> Path:
        """Move a complete bundle (inside this part's folder) into place as ``version``.

        Raises:
            BundleError: the bundle does not verify (nothing is added).
        """
        with self._lock:
            Bundle.open(bundle_dir)
            dst = self.part_dir(part) / version
            if dst.exists():
                raise EdgeError(f"part {part}: version {version} exists already")
            os.replace(bundle_dir, dst)
            self.record(part, "added", version=version, **fields)
            return dst

    def promote(self, part: str, version: str, by: str = "operator") -> str:
        """Make ``version`` the live one (atomic symlink swap). Returns the version replaced (or "").

        Raises:
            EdgeError: unknown version. BundleError: it no longer verifies.
        """
        with self._lock:
            if version not in self.versions(part):
                raise EdgeError(f"part {part} has no version {version!r} (versions: {self.versions(part)})")
            Bundle.open(self.part_dir(part) / version)
            old = self.current(part) or ""
            link = self.current_path(part)
            tmp = link.with_name(f".current-{os.getpid()}-{threading.get_ident()}")
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(version, tmp)
            os.replace(tmp, link)
            self.record(part, "promoted", version=version, replaced=old or None, by=by)
            self.prune(part)
            return old

    def rollback(self, part: str, by: str = "operator") -> str:
        """Back to the version live before ``current``. Returns it.

        Raises:
            EdgeError: no earlier version to go back to.
        """
        with self._lock:
            previous = self.previous(part)
            if previous is None:
                raise EdgeError(f"part {part}: no earlier version to roll back to")
            current = self.current(part)
            self.promote(part, previous, by=by)
            self.record(part, "rolled_back", version=previous, replaced=current, by=by)
            return previous

    def prune(self, part: str) -> list[str]:
        """Delete the oldest versions beyond ``keep``; never ``current`` or the previous one."""
        with self._lock:
            protected = {self.current(part), self.previous(part)}
            versions = self.versions(part)
            removable = [v for v in versions if v not in protected]
            extra = len(versions) - self.keep
            gone = []
            for version in removable[: max(0, extra)]:
                shutil.rmtree(self.part_dir(part) / version, ignore_errors=True)
                gone.append(version)
            if gone:
                self.record(part, "pruned", versions=gone)
            return gone

    def recover(self) -> list[tuple[str, str]]:
        """Remove half-made versions left by a crash or a restart; returns ``(part, version)`` of each."""
        left = []
        for part in self.parts():
            for incoming in self.part_dir(part).glob(".incoming-*"):
                version = incoming.name.split("-", 1)[1]
                shutil.rmtree(incoming, ignore_errors=True)
                self.record(part, "interrupted", version=version, detail="the daemon stopped during training")
                left.append((part, version))
        return left

    def verify(self, part: str, version: str) -> Bundle:
        try:
            return Bundle.open(self.part_dir(part) / version)
        except BundleError as err:
            raise EdgeError(f"part {part} version {version}: {err}") from None
