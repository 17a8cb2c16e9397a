"""Training images for a part: collected from a camera while inspection goes on, or imported.

* :class:`Collector`: ``collect {camera, part, count}`` saves that camera's next ``count`` frames as
  known-good PNGs in ``parts/<part>/images/good`` (named by acquisition id). The inference thread only
  hands the frame over (a bounded queue, never blocking); a writer thread encodes and writes each file
  under a temporary name, then renames it.
* :func:`import_folder`: images brought on a USB stick, as an MVTec ``train/good`` folder or a flat
  folder; a ``defects/`` subfolder holds confirmed defects (validation only). Every file is decoded
  first: one unreadable file refuses the whole import, which names it.
* :func:`import_evidence`: a FAIL frame from the evidence store that an operator marked as good (a false
  reject: it becomes a training image) or as a confirmed defect (a validation defect).
* :func:`review_image`: an operator's verdict on one of the part's good images, typically one that a
  training job's ``validation.review`` lists (the threshold rests on the highest-scoring good images, so a
  defective part collected as good raises it): ``defect`` moves it to the confirmed defects.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.errors import EdgeError
from edge.store import ModelStore
from engines.pixels import list_images, read_image_file

__all__ = ["Collector", "import_evidence", "import_folder", "review_image"]

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text)[:80] or "frame"


def _unique(folder: Path, stem: str, suffix: str = ".png") -> Path:
    """``folder/stem.png``, or ``stem_2.png``, ``stem_3.png``... when taken (imports never overwrite)."""
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}_{n}{suffix}"
    return path


def _write_png(path: Path, image: np.ndarray) -> None:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, data = cv2.imencode(".png", bgr)
    if not ok:
        raise EdgeError(f"cannot encode {path.name} as PNG")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.tobytes())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk leaves no partial file behind
        raise


@dataclass
class _Collection:
    camera: str
    part: str
    count: int
    saved: int = 0
    dropped: int = 0
    error: str | None = None

    @property
    def left(self) -> int:
        return max(0, self.count - self.saved - self.dropped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "part": self.part,
            "count": self.count,
            "saved": self.saved,
            "dropped": self.dropped,
            "left": self.left,
            "error": self.error,
        }


class Collector:
    """Saves frames of cameras with an active collection (one writer thread).

    Args:
        store: the model store.
        queue_size: frames waiting for the writer; beyond it a frame is not saved (counted as dropped,
            the collection then takes the next frame instead).
    """

    def __init__(self, store: ModelStore, queue_size: int = 16) -> None:
        self.store = store
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[_Collection, np.ndarray, str]] = collections.deque()
        self._queue_size = queue_size
        self._active: dict[str, _Collection] = {}
        self._done: dict[str, _Collection] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()

    def start(self, camera: str, part: str, count: int) -> dict[str, Any]:
        """Begin collecting ``count`` frames of ``camera`` for ``part`` (replaces a running collection)."""
        if count < 1 or count > 100000:
            raise EdgeError(f"collect: count must be 1..100000, got {count}")
        self.store.images_dir(part, "good")  # checks the part name, creates the folder
        job = _Collection(camera, part, int(count))
        with self._cond:
            self._active[camera] = job
        self.store.record(part, "collect_started", camera=camera, count=count)
        return job.to_dict()

    def wants(self, camera: str) -> bool:
        return camera in self._active

    def offer(self, camera: str, image: np.ndarray, acquisition_id: str) -> None:
        """Hand over one frame of ``camera`` (never blocks; ignored when no collection runs)."""
        with self._cond:
            job = self._active.get(camera)
            if job is None:
                return
            pending = sum(1 for j, _, _ in self._queue if j is job)
            if job.saved + pending >= job.count:
                return
            if len(self._queue) >= self._queue_size:
                return  # the writer is behind: this frame is skipped, a later one is taken
            self._queue.append((job, image, acquisition_id))
            self._cond.notify()

    def progress(self) -> dict[str, Any]:
        with self._cond:
            return {
                "active": {c: j.to_dict() for c, j in self._active.items()},
                "done": {c: j.to_dict() for c, j in self._done.items()},
            }

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait(0.5)
                if not self._queue:
                    return
                job, image, acq = self._queue.popleft()
            try:
                folder = self.store.images_dir(job.part, "good")
                _write_png(_unique(folder, f"{_safe(job.camera)}_{_safe(acq)}"), image)
                job.saved += 1
            except (OSError, EdgeError) as err:
                job.error = f"cannot save a frame for part {job.part}: {err}"
                log.error("%s", job.error)
                job.dropped += 1
            with self._cond:
                if job.left == 0 and self._active.get(job.camera) is job:
                    del self._active[job.camera]
                    self._done[job.camera] = job
                    self.store.record(job.part, "collected", camera=job.camera, saved=job.saved)
                    log.info("collected %d frame(s) of %s for part %s", job.saved, job.camera, job.part)


def _read_all(paths: list[Path]) -> list[np.ndarray]:
    images = []
    for p in paths:
        try:
            images.append(read_image_file(p))
        except (OSError, ValueError) as err:
            raise EdgeError(
                f"import refused: {p} is not a readable image ({err}): remove or replace it"
            ) from None
    return images


def import_folder(store: ModelStore, part: str, folder: str | Path) -> dict[str, int]:
    """Import ``folder`` (MVTec ``train/good`` + optional ``defects/``, or flat) into ``part``.

    Returns:
        ``{"good": n, "defects": m}`` imported.

    Raises:
        EdgeError: missing folder, no images, an unreadable file (nothing is imported then).
    """
    root = Path(folder)
    if not root.is_dir():
        raise EdgeError(f"import: {root} is not a folder")
    good_dir = root / "train" / "good" if (root / "train" / "good").is_dir() else root
    good, defects = list_images(good_dir), list_images(root / "defects")
    if not good and not defects:
        raise EdgeError(f"import: no images in {good_dir} (PNG, JPEG, BMP or TIFF)")
    good_images, defect_images = _read_all(good), _read_all(defects)
    out = {"good": 0, "defects": 0}
    written: list[Path] = []
    try:
        for kind, paths, images in (("good", good, good_images), ("defects", defects, defect_images)):
            if not paths:
                continue
            target = store.images_dir(part, kind)
            for p, img in zip(paths, images, strict=True):
                dst = _unique(target, f"import_{_safe(p.stem)}")
                _write_png(dst, img)
                written.append(dst)
                out[kind] += 1
    except OSError as err:
        for dst in written:  # all or nothing: the part's images stay as they were
            dst.unlink(missing_ok=True)
        why = "disk full" if err.errno == 28 else (err.strerror or str(err))
        raise EdgeError(f"import refused ({why} under {store.root}): free space and import again") from None
    store.record(part, "imported", source=str(root), **out)
    return out


def import_evidence(store: ModelStore, part: str, evidence_root: str | Path, item: str, kind: str) -> str:
    """Import one evidence item (its frame) as a good training image or a confirmed defect.

    Args:
        item: the item's path relative to the evidence folder (its ``.png`` frame or ``_header.json``).
        kind: ``"good"`` (a false reject) or ``"defect"``.

    Raises:
        EdgeError: a path outside the evidence folder, a missing or unreadable frame, a bad kind.
    """
    if kind not in ("good", "defect"):
        raise EdgeError(f"import: kind must be 'good' (a false reject) or 'defect', got {kind!r}")
    root = Path(evidence_root).resolve()
    path = (root / item).resolve()
    if root not in path.parents:
        raise EdgeError(f"import: {item!r} is not inside the evidence folder")
    if path.name.endswith("_header.json"):
        path = path.with_name(path.name[: -len("_header.json")] + ".png")
    if not path.is_file():
        raise EdgeError(f"import: evidence frame {item!r} not found (it may have been pruned)")
    (image,) = _read_all([path])
    target = _unique(
        store.images_dir(part, "good" if kind == "good" else "defects"), f"evidence_{_safe(path.stem)}"
    )
    _write_png(target, image)
    store.record(part, "imported_evidence", item=item, kind=kind)
    return str(target)


def review_image(store: ModelStore, part: str, image: str, verdict: str) -> dict[str, Any]:
    """An operator's verdict on one of ``part``'s good training images.

    ``"defect"`` moves it to ``images/defects`` (a confirmed defect: out of the next training and of its
    threshold, into its validation's escape rate); ``"good"`` keeps it (checked). Either way the store's
    history records the verdict.

    Args:
        image: ``images/good/<name>`` (as ``validation.review`` lists it) or ``<name>``.
        verdict: ``"defect"`` or ``"good"``.

    Raises:
        EdgeError: a bad verdict, a name outside the part's good images, a missing image.
    """
    if verdict not in ("good", "defect"):
        raise EdgeError(f"review: verdict must be 'defect' or 'good', got {verdict!r}")
    name = Path(image).name
    if image not in (name, f"images/good/{name}") or name in ("", ".", ".."):
        raise EdgeError(
            f"review: {image!r} is not one of part {part}'s good images: give images/good/<name> as the "
            "job's validation.review lists it"
        )
    good = store.part_dir(part) / "images" / "good"  # not images_dir: an unknown part gets no folder
    if not good.is_dir():
        raise EdgeError(f"review: part {part} has no good images here: parts are {store.parts()}")
    path = good / name
    if not path.is_file():
        raise EdgeError(
            f"review: images/good/{name} not found in part {part} (already reviewed as a defect? "
            "see 'parts' for the history)"
        )
    result: dict[str, Any] = {"part": part, "image": f"images/good/{name}", "verdict": verdict}
    if verdict == "defect":
        target = _unique(store.images_dir(part, "defects"), path.stem, path.suffix)
        os.replace(path, target)
        result["moved_to"] = f"images/defects/{target.name}"
    store.record(part, "reviewed", **{k: v for k, v in result.items() if k != "part"})
    log.info("part %s: %s reviewed as %s", part, result["image"], verdict)
    return result
