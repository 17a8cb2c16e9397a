"""A bounded on-disk store of FAIL and UNKNOWN frames, for operator review and retraining.

Layout, one item per stored result::

    <root>/<camera>/<YYYYMMDD>/<seq>_<verdict>_<acq>.png           the frame, lossless (RGB or gray)
    <root>/<camera>/<YYYYMMDD>/<seq>_<verdict>_<acq>_overlay.jpg   heatmap overlay (JET) with region boxes
    <root>/<camera>/<YYYYMMDD>/<seq>_<verdict>_<acq>_header.json   the published result header

The day is the local date of the acquisition. Every file is written under a hidden temporary name and
renamed, and the header is written last: an item whose header exists is complete.

:meth:`EvidenceStore.submit` never blocks the pipeline: items go to a bounded queue (by count and by
image bytes) that one writer thread empties; a full queue drops the item and counts it. After each write
and once a minute the oldest items (by mtime, whole items) are deleted until the store is within
``max_bytes`` and nothing is older than ``max_age_s``. The store never fills the disk: while the file
system holding it has less than ``min_free_bytes`` free (a fixed amount, default 1 GB, the same on a 32 GB
module and a 2 TB disk) it stops writing, names the state in :attr:`EvidenceStore.degraded` and resumes
when space is back.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.errors import EdgeError

__all__ = ["EvidenceStore"]

log = logging.getLogger(__name__)

_IMAGE = ".png"
_OVERLAY = "_overlay.jpg"
_HEADER = "_header.json"
_SUFFIXES = (_OVERLAY, _HEADER, _IMAGE)  # longest first: "x_overlay.jpg" is the overlay of "x"
_TMP_MARK = ".tmp-"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_OVERLAY_ALPHA = 0.45
_JPEG_QUALITY = 90
_MAINTENANCE_S = 60.0  # age pruning and the free-space check while idle
_RESCAN_S = 3600.0  # re-read the folder (items deleted or added by hand)


def safe_name(text: Any, limit: int = 64) -> str:
    """``text`` as a file-name part: letters, digits, ``.``, ``_``, ``-`` only, no leading dot, at most
    ``limit`` characters; ``na`` when nothing is left."""
    name = _UNSAFE.sub("-", str(text)).lstrip(".-")[:limit]
    return name or "na"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def _mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"


@dataclass
class _Job:
    header: dict[str, Any]
    camera: str
    day: str
    stem: str
    image: np.ndarray | None
    heatmap: np.ndarray | None
    regions: list[Any]
    nbytes: int


@dataclass
class _Item:
    """One stored item in the index: its folder, name stem, files, size and newest mtime."""

    folder: Path
    stem: str
    mtime: float = 0.0
    nbytes: int = 0
    files: set[str] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return self.stem + _HEADER in self.files


class EvidenceStore:
    """Stores FAIL / UNKNOWN frames under ``root`` within a size and an age limit.

    Args:
        root: the store's folder (created if missing).
        max_bytes: total size limit of the stored files.
        max_age_s: items older than this (by mtime) are deleted.
        queue_size: items waiting for the writer; beyond it :meth:`submit` drops.
        max_queue_bytes: image bytes waiting for the writer; beyond it :meth:`submit` drops.
        min_free_bytes: free-space floor in bytes of the file system holding ``root``; below it nothing is
            written. Read on every check; may be changed while running.
        maintenance_s: while idle, age pruning and the free-space check run this often.
        rescan_s: the folder is re-read this often (items deleted or copied in by hand).

    Raises:
        EdgeError: ``root`` cannot be created or written.
    """

    def __init__(
        self,
        root: Path | str,
        max_bytes: int,
        max_age_s: float,
        queue_size: int = 64,
        max_queue_bytes: int = 256_000_000,
        min_free_bytes: int = 1_000_000_000,
        maintenance_s: float = _MAINTENANCE_S,
        rescan_s: float = _RESCAN_S,
    ) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.max_age_s = float(max_age_s)
        self.min_free_bytes = int(min_free_bytes)
        self._queue_size = max(1, int(queue_size))
        self._max_queue_bytes = int(max_queue_bytes)
        self._maintenance_s = float(maintenance_s)
        self._rescan_s = float(rescan_s)
        self._check_root()
        self._cond = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_bytes = 0
        self._busy = False
        self._closing = False
        self._seq = 0
        self._index: collections.OrderedDict[str, _Item] = collections.OrderedDict()  # oldest first
        self._bytes = 0
        self._dropped = 0
        self._written = 0
        self._skipped = 0
        self._pruned = 0
        self._errors = 0
        self._degraded: tuple[str, str] | None = None  # (state, message)
        self._scan()
        self._prune()
        log.info(
            "evidence store %s: %d items, %s (limits %s, %.1f days)",
            self.root,
            len(self._index),
            _mb(self._bytes),
            _mb(self.max_bytes),
            self.max_age_s / 86400,
        )
        self._thread = threading.Thread(target=self._run, name="evidence-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API

    @property
    def degraded(self) -> str | None:
        """Why the store is not writing (low disk, write errors), one line; None while it works."""
        with self._cond:
            return None if self._degraded is None else self._degraded[1]

    @property
    def degraded_state(self) -> str | None:
        """The degraded state's short name (``evidence_low_disk``, ``evidence_write_failed``) for metrics
        labels, or None while the store works."""
        with self._cond:
            return None if self._degraded is None else self._degraded[0]

    def submit(
        self,
        header: Mapping[str, Any],
        image: np.ndarray | None,
        heatmap_u8: np.ndarray | None = None,
        regions: Iterable[Any] | None = None,
    ) -> bool:
        """Queue one result for storage without blocking.

        Args:
            header: the published result header; ``camera`` and ``verdict`` are required, ``seq`` (the
                result's sequence number), ``acquisition_id`` and ``t_capture`` (Unix seconds: the day
                folder) are used when present. Written as JSON (numpy values converted).
            image: the frame, canonical uint8 ``(h, w)`` gray or ``(h, w, 3)`` RGB; None: header only.
                Kept by reference until written: do not modify it after submitting.
            heatmap_u8: uint8 ``(h', w')`` anomaly map (resized to the frame; copied); None: none.
            regions: boxes drawn on the overlay, in camera-frame pixels: objects with a ``bbox``
                attribute (:class:`edge.regions.Region`), ``{"bbox": [x, y, w, h], ...}`` mappings (its
                ``to_dict()``) or ``(x, y, w, h)`` sequences; others are ignored.

        Returns:
            True when queued; False when dropped (queue full or the store is closed; counted).

        Raises:
            ValueError: ``header`` has no ``camera`` or ``verdict``.
        """
        if not header.get("camera") or not header.get("verdict"):
            raise ValueError("an evidence header needs 'camera' and 'verdict'")
        if heatmap_u8 is not None:
            heatmap_u8 = np.array(heatmap_u8, copy=True)  # small; a backend may reuse its output buffer
        nbytes = sum(a.nbytes for a in (image, heatmap_u8) if a is not None)
        with self._cond:
            if (
                self._closing
                or len(self._queue) >= self._queue_size
                or (self._queue and self._queued_bytes + nbytes > self._max_queue_bytes)
            ):
                self._dropped += 1
                return False
            self._seq += 1
            seq = header.get("seq", self._seq)
            self._queue.append(self._job(dict(header), image, heatmap_u8, regions, nbytes, seq))
            self._queued_bytes += nbytes
            self._cond.notify()
        return True

    def usage(self) -> dict[str, Any]:
        """Counters and size: ``items``, ``bytes``, ``oldest_age_s`` (None when empty), ``queued``,
        ``written``, ``dropped`` (queue full / closed), ``skipped`` (not written: low disk or a write
        error), ``errors``, ``pruned``, ``degraded`` (reason or None)."""
        with self._cond:
            oldest = next(iter(self._index.values()), None)
            return {
                "items": len(self._index),
                "bytes": self._bytes,
                "oldest_age_s": None if oldest is None else max(0.0, time.time() - oldest.mtime),
                "queued": len(self._queue),
                "written": self._written,
                "dropped": self._dropped,
                "skipped": self._skipped,
                "errors": self._errors,
                "pruned": self._pruned,
                "degraded": None if self._degraded is None else self._degraded[1],
            }

    def list(self, camera: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Stored complete items, newest first.

        Args:
            camera: only this camera's items; None: all.
            limit: at most this many.

        Returns:
            Dicts with ``camera``, ``day``, ``name`` (the stem), ``mtime``, ``bytes``, ``header`` (the
            parsed header JSON), ``header_path``, ``image`` and ``overlay`` (paths as str, or None).
        """
        with self._cond:
            items = [
                (it.folder, it.stem, it.mtime, it.nbytes, set(it.files))
                for it in reversed(self._index.values())
                if it.complete and (camera is None or it.folder.parent.name == safe_name(camera))
            ]
        out: list[dict[str, Any]] = []
        for folder, stem, mtime, nbytes, files in items:
            if len(out) >= limit:
                break
            header_path = folder / (stem + _HEADER)
            try:
                header = json.loads(header_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # pruned meanwhile, or damaged
            out.append(
                {
                    "camera": folder.parent.name,
                    "day": folder.name,
                    "name": stem,
                    "mtime": mtime,
                    "bytes": nbytes,
                    "header": header,
                    "header_path": str(header_path),
                    "image": str(folder / (stem + _IMAGE)) if stem + _IMAGE in files else None,
                    "overlay": str(folder / (stem + _OVERLAY)) if stem + _OVERLAY in files else None,
                }
            )
        return out

    def close(self, timeout: float = 10.0) -> bool:
        """Write what is queued within ``timeout`` seconds, then stop the writer (idempotent).

        Returns:
            True when everything queued was handled; False when items were left (dropped and counted)
            or the writer did not stop in time.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            left = len(self._queue)
            self._dropped += left
            self._queue.clear()
            self._queued_bytes = 0
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if left:
            log.warning("evidence store closed with %d items unwritten (deadline %.1f s)", left, timeout)
        return left == 0 and not self._thread.is_alive()

    def __enter__(self) -> EvidenceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ set-up and index

    def _check_root(self) -> None:
        probe = self.root / f".probe{_TMP_MARK}{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise EdgeError(
                f"evidence directory {self.root} is not writable ({err.strerror or err}): create it and give "
                "the daemon's user write access, or set evidence.dir to another folder"
            ) from None

    def _scan(self) -> None:
        """Index the items on disk (oldest first) and delete temporary files left by a crash."""
        items: dict[str, _Item] = {}
        for cam_dir in _subdirs(self.root):
            for day_dir in _subdirs(cam_dir):
                try:
                    entries = list(os.scandir(day_dir))
                except OSError:
                    continue
                for entry in entries:
                    if entry.name.startswith(".") and _TMP_MARK in entry.name:
                        _unlink(Path(entry.path))
                        continue
                    stem = _split(entry.name)
                    if stem is None or not entry.is_file(follow_symlinks=False):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    key = str(day_dir / stem)
                    item = items.setdefault(key, _Item(day_dir, stem))
                    item.files.add(entry.name)
                    item.nbytes += st.st_size
                    item.mtime = max(item.mtime, st.st_mtime)
        index = collections.OrderedDict(sorted(items.items(), key=lambda kv: kv[1].mtime))
        with self._cond:
            self._index = index
            self._bytes = sum(it.nbytes for it in index.values())
        log.debug("evidence store %s: %d items, %s", self.root, len(index), _mb(self._bytes))

    def _prune(self) -> None:
        """Delete the oldest items until within ``max_bytes`` and ``max_age_s``."""
        cutoff = time.time() - self.max_age_s
        victims: list[_Item] = []
        with self._cond:
            while self._index:
                oldest = next(iter(self._index.values()))
                if self._bytes <= self.max_bytes and oldest.mtime >= cutoff:
                    break
                self._index.popitem(last=False)
                self._bytes -= oldest.nbytes
                self._pruned += 1
                victims.append(oldest)
        folders = set()
        for item in victims:
            # The header first: a half-deleted item is no longer listed as complete.
            for name in sorted(item.files, key=lambda n: not n.endswith(_HEADER)):
                _unlink(item.folder / name)
            folders.add(item.folder)
        for folder in folders:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: the day is gone
        if victims:
            log.debug("evidence: pruned %d items", len(victims))

    # ------------------------------------------------------------------ the writer

    def _job(
        self,
        header: dict[str, Any],
        image: np.ndarray | None,
        heatmap: np.ndarray | None,
        regions: Iterable[Any] | None,
        nbytes: int,
        seq: Any,
    ) -> _Job:
        camera = safe_name(header["camera"])
        t = header.get("t_capture")
        day = time.strftime("%Y%m%d", time.localtime(t if isinstance(t, (int, float)) else None))
        seq_part = f"{int(seq):08d}" if isinstance(seq, (int, np.integer)) else safe_name(seq, 24)
        acq = safe_name(header.get("acquisition_id", "na"))
        stem = f"{seq_part}_{safe_name(header['verdict'], 16)}_{acq}"
        return _Job(header, camera, day, stem, image, heatmap, list(regions or []), nbytes)

    def _run(self) -> None:
        last_maintenance = last_scan = time.monotonic()
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    wait = self._maintenance_s - (time.monotonic() - last_maintenance)
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if not self._queue and self._closing:
                    return
                job = self._queue.popleft() if self._queue else None
                if job is not None:
                    self._queued_bytes -= job.nbytes
                    self._busy = True
            try:
                if job is None:
                    last_maintenance = time.monotonic()
                    if last_maintenance - last_scan >= self._rescan_s:
                        last_scan = last_maintenance
                        self._scan()
                    self._free_space_ok()
                    self._prune()
                else:
                    self._handle(job)
            except Exception as err:  # never let one bad item end the writer
                log.warning("evidence: unexpected error: %s: %s", type(err).__name__, err)
                with self._cond:
                    self._errors += 1
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _set_degraded(self, state: str | None, message: str = "") -> None:
        """Enter ``state`` (logged once per spell) or, with None, leave any state."""
        with self._cond:
            old = self._degraded
            self._degraded = None if state is None else (state, message)
        if state is not None and (old is None or old[0] != state):
            log.warning("%s", message)
        elif state is None and old is not None:
            log.info("evidence store writing again (was: %s)", old[1])

    def _clear_degraded(self, state: str) -> None:
        with self._cond:
            active = self._degraded is not None and self._degraded[0] == state
        if active:
            self._set_degraded(None)

    def _free_space_ok(self) -> bool:
        try:
            st = os.statvfs(self.root)
        except OSError as err:
            self._set_degraded(
                "evidence_low_disk", f"evidence store {self.root} unreadable ({err.strerror}): not writing"
            )
            return False
        free = st.f_bavail * st.f_frsize
        floor = self.min_free_bytes
        if free < floor:
            self._set_degraded(
                "evidence_low_disk",
                f"evidence store paused: {_mb(free)} free on the file system of {self.root}, below the "
                f"floor of {_mb(floor)}; free disk space or lower evidence.min_free_mb",
            )
            return False
        self._clear_degraded("evidence_low_disk")
        return True

    def _handle(self, job: _Job) -> None:
        if not self._free_space_ok():
            with self._cond:
                self._skipped += 1
            return
        try:
            item = self._write(job)
        except (OSError, cv2.error) as err:
            with self._cond:
                self._skipped += 1
                self._errors += 1
            why = getattr(err, "strerror", None) or str(err).strip().splitlines()[-1]
            self._set_degraded("evidence_write_failed", f"evidence store write failed in {self.root}: {why}")
            return
        key = str(item.folder / item.stem)
        with self._cond:
            old = self._index.pop(key, None)  # only when its files were deleted by hand meanwhile
            self._bytes += item.nbytes - (old.nbytes if old else 0)
            self._index[key] = item
            self._written += 1
        self._clear_degraded("evidence_write_failed")
        self._prune()

    def _write(self, job: _Job) -> _Item:
        folder = self.root / job.camera / job.day
        folder.mkdir(parents=True, exist_ok=True)
        stem, n = job.stem, 1
        while (folder / (stem + _HEADER)).exists() or (folder / (stem + _IMAGE)).exists():
            n += 1  # the sequence restarted (daemon restart): keep both
            stem = f"{job.stem}~{n}"
        item = _Item(folder, stem)
        files: list[tuple[str, bytes]] = []
        if job.image is not None:
            files.append((stem + _IMAGE, _encode(".png", _to_bgr(job.image))))
            if job.heatmap is not None or job.regions:
                overlay = _overlay(job.image, job.heatmap, job.regions)
                files.append((stem + _OVERLAY, _encode(".jpg", overlay)))
        header = json.dumps(job.header, default=_json_default, indent=1, sort_keys=True).encode()
        files.append((stem + _HEADER, header))  # last: its presence marks the item complete
        for name, data in files:
            _atomic_write(folder / name, data)
            item.files.add(name)
            item.nbytes += len(data)
        item.mtime = max(os.stat(folder / name).st_mtime for name in item.files)
        return item


def _split(name: str) -> str | None:
    """The item stem of a stored file's name, or None for a file that is not part of an item."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _subdirs(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder`` (none when unreadable), in name order."""
    try:
        return sorted(
            Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False) and e.name[0] != "."
        )
    except OSError:
        return []


def _unlink(path: Path) -> None:
    """Delete ``path``; a missing file is fine, other failures are logged at DEBUG."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:
        log.debug("cannot delete %s: %s", path, err)


def _encode(ext: str, image: np.ndarray) -> bytes:
    """``image`` (BGR or gray) encoded as ``ext`` (``.png`` lossless, ``.jpg``).

    Raises:
        cv2.error: the image cannot be encoded.
    """
    params = [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise cv2.error(f"cannot encode a {image.shape} {image.dtype} image as {ext}")
    return bytes(buf.tobytes())


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a hidden temporary name beside ``path``, flush it to disk and rename it.

    Raises:
        OSError: the write or the rename failed (the temporary file is removed).
    """
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _to_bgr(image: np.ndarray) -> np.ndarray:
    """Canonical uint8 gray / RGB to what OpenCV writes (gray stays gray)."""
    if image.dtype != np.uint8:
        raise cv2.error(f"evidence frames must be uint8, got {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    raise cv2.error(f"evidence frames must be (h, w) or (h, w, 3), got {image.shape}")


def _box(region: Any) -> tuple[int, int, int, int] | None:
    """``(x, y, w, h)`` of a region (``.bbox``, ``{"bbox": ...}`` or a 4-sequence), None when unusable."""
    bbox = region.get("bbox") if isinstance(region, Mapping) else getattr(region, "bbox", region)
    if bbox is None:
        return None
    try:
        x, y, w, h = (round(float(v)) for v in bbox)
    except (TypeError, ValueError):
        return None
    return (x, y, w, h) if w > 0 and h > 0 else None


def _overlay(image: np.ndarray, heatmap: np.ndarray | None, regions: list[Any]) -> np.ndarray:
    """BGR overlay at the frame's size: the JET-coloured heatmap blended over the frame, boxes in red."""
    base = _to_bgr(image)
    if base.ndim == 2 or base.shape[2] == 1:
        base = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR)
    h, w = base.shape[:2]
    out = base.copy()
    if heatmap is not None:
        heat = np.asarray(heatmap)
        if heat.dtype != np.uint8:
            heat = np.clip(heat, 0, 255).astype(np.uint8)
        heat = heat.reshape(heat.shape[:2])
        if heat.shape != (h, w):
            heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
        color = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
        out = cv2.addWeighted(base, 1.0 - _OVERLAY_ALPHA, color, _OVERLAY_ALPHA, 0.0)
    thickness = max(2, round(min(h, w) / 300))  # survives JPEG's halved colour resolution
    for region in regions:
        box = _box(region)
        if box is not None:
            x, y, bw, bh = box
            cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), (0, 0, 255), thickness)
    return out
