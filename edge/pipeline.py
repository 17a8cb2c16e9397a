"""Capture and inference, decoupled by bounded per-camera buffers; every accepted part gets one outcome.

Threads (all joinable, all stopped by events, none owns a ZeroMQ socket):

* one :class:`CaptureWorker` per camera: opens its source (reconnecting with doubling backoff while the
  camera is down), carries out software triggers, reads frames and hands them to the camera's buffer;
* one :class:`InferenceGroup` per model (cameras that share a bundle and backend share one model and
  one thread, so frames waiting from several cameras are scored in one batch), and its post-processing
  thread (verdicts, regions, results), so the next batch's inference overlaps the last one's results.

Buffers, per camera (:class:`CameraState`):

* **free-run**: one slot holding the newest frame; a frame that replaces an unscored one is dropped and
  counted (``free_run_replaced``);
* **triggered**: a FIFO of ``pipeline.queue_size`` parts, inspected in order. A part arriving while it is
  full is not dropped: it becomes an ``UNKNOWN`` outcome (``queue_overflow``) with its acquisition id.
  Replay sources (a folder or video file without a frame rate) are paced by the consumer instead: the
  capture waits for room, since every file is a part that must be inspected.

Every part that enters the pipeline is resolved exactly once (:meth:`Pipeline.resolve`): scored
(PASS / FAIL) or ``UNKNOWN`` with a reason (bad frame, stale, inference error or timeout, non-finite
score, no model, camera down at a trigger, paused, shutdown). The outcome goes to the ``on_outcome``
callback (the daemon publishes it). A model swap happens between two batches: each batch is scored by the
one model it started with, and its outcomes name that model.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.config import CameraSection, PipelineSection
from edge.errors import SourceError
from edge.model import LoadedModel
from edge.regions import Region, find_regions
from edge.sources import open_source
from edge.sources.base import EndOfStream, Frame, Source
from engines.preprocess import Geometry, preprocess_batch
from engines.verdict import UNKNOWN, verdict

__all__ = ["CameraState", "CaptureWorker", "InferenceGroup", "Job", "Outcome", "Pipeline"]

log = logging.getLogger(__name__)

_READ_SLICE_S = 0.25  # a capture thread returns to its loop at least this often (stop, triggers)


@dataclass(eq=False)
class Job:
    """One part in the pipeline: a frame (or a part without one, e.g. a trigger while the camera is down)."""

    camera: str
    frame: Frame | None
    acquisition_id: str
    t_capture: float
    t_mono: float
    unknown: tuple[str, str] | None = None
    resolved: bool = False


_Entry = tuple["CameraState", Job, "int | None"]
"""A part of a batch: its camera, the job, and its index in the scores (None: it is UNKNOWN)."""


@dataclass
class _Scored:
    """A batch on its way from the inference thread to the post-processing thread, in acquisition order."""

    entries: list[_Entry]
    scores: Any  # engines.backends.Scores, or None when no part of the batch was scored
    geoms: list[Geometry]
    model: LoadedModel | None
    t_start: float
    t_pre: float
    t_inf: float


@dataclass
class Outcome:
    """A resolved part: what the daemon publishes. Latencies are in seconds."""

    job: Job
    verdict: str
    score: float | None
    threshold: float
    threshold_source: str
    reason: str | None = None
    detail: str | None = None
    model: LoadedModel | None = None
    anomaly_map: np.ndarray | None = None
    geometry: Geometry | None = None
    regions: list[Region] = field(default_factory=list)
    latency: dict[str, float] = field(default_factory=dict)


class CameraState:
    """Everything the pipeline and the daemon know about one camera (guarded by :attr:`lock`)."""

    def __init__(self, cfg: CameraSection, queue_size: int) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.lock = threading.Lock()
        self.queue: collections.deque[Job] = collections.deque()
        self.queue_size = queue_size
        self.latest: Job | None = None
        self.state = "starting"
        self.detail: str | None = None
        self.paused = False
        self.ended = False
        self.threshold_override: float | None = cfg.threshold
        self.threshold_source = "config" if cfg.threshold is not None else "bundle"
        self.frames = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.reconnects = 0
        self.last_progress = time.monotonic()
        self.source_info: dict[str, Any] = {}
        self.triggers: collections.deque[float] = collections.deque()
        self.trigger_count = 0

    @property
    def triggered(self) -> bool:
        return self.cfg.mode == "triggered"

    def depth(self) -> int:
        return len(self.queue) + (1 if self.latest is not None else 0)

    def pop(self) -> Job | None:
        """Next job to score (caller holds the group's condition)."""
        if self.queue:
            return self.queue.popleft()
        job, self.latest = self.latest, None
        return job

    def threshold_for(self, model: LoadedModel | None) -> tuple[float, str]:
        """The threshold in force and where it comes from (``config``/``control`` override or ``bundle``)."""
        with self.lock:
            if self.threshold_override is not None:
                return self.threshold_override, self.threshold_source
        return (model.threshold if model is not None else float("nan")), "bundle"


def _is_replay(cfg: CameraSection) -> bool:
    """Sources where every frame is a part and the consumer sets the pace (no live camera behind)."""
    s = cfg.source
    if s.fps > 0:
        return False
    if s.kind == "folder":
        return not s.step
    if s.kind == "opencv" and s.uri is not None:
        return not s.uri.isdigit() and "://" not in s.uri and "!" not in s.uri
    return False


class InferenceGroup:
    """Scores the frames of the cameras that share one model, in batches, in its own thread.

    Args:
        key: the group's name (bundle path and backend).
        model: the loaded model, or None (every part is UNKNOWN ``no_model`` until one is swapped in).
        cameras: the cameras of the group.
        pipeline: the owning pipeline (for resolving outcomes).
        cfg: the pipeline settings (batch size).
    """

    def __init__(
        self,
        key: str,
        model: LoadedModel | None,
        cameras: list[CameraState],
        pipeline: Pipeline,
        cfg: PipelineSection,
        model_error: str | None = None,
    ) -> None:
        self.key = key
        self.cameras = cameras
        self.pipeline = pipeline
        self.cfg = cfg
        self.cond = threading.Condition()
        self.model = model
        self.model_error = model_error
        self._next_model: LoadedModel | None = None
        self.busy_since: float | None = None
        self.in_flight: list[Job] = []
        self.batches = 0
        self.errors = 0
        self.stop = threading.Event()
        self._rr = 0
        self._buffers: dict[int, np.ndarray] = {}  # batch size -> input buffer, reused between batches
        # bounded: inference waits when post-processing falls two batches behind
        self._post: queue.Queue[_Scored | None] = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._run, name=f"infer[{key}]", daemon=True)
        self.post_thread = threading.Thread(target=self._post_run, name=f"post[{key}]", daemon=True)

    # -------------------------------------------------------------------------------- feeding

    def put(self, cam: CameraState, job: Job, wait: bool, stop: threading.Event) -> None:
        """Hand a job to ``cam``'s buffer (see the module docstring for the policies)."""
        overflow: Job | None = None
        with self.cond:
            if cam.triggered or job.unknown is not None:
                while wait and len(cam.queue) >= cam.queue_size and not stop.is_set():
                    self.cond.wait(0.1)
                if len(cam.queue) >= cam.queue_size:
                    overflow = job
                else:
                    cam.queue.append(job)
            else:
                if cam.latest is not None:
                    cam.dropped["free_run_replaced"] += 1
                    self.pipeline.count_drop(cam.name, "free_run_replaced")
                cam.latest = job
            self.cond.notify_all()
        if overflow is not None:
            detail = f"queue of {cam.queue_size} parts full when the part arrived"
            overflow.unknown = ("queue_overflow", detail)
            self.pipeline.resolve_unknown(overflow, cam, self.model)

    def pending(self) -> int:
        """Parts queued, being scored, or scored and waiting for their results."""
        with self.cond:
            return sum(c.depth() for c in self.cameras) + len(self.in_flight) + self._post.unfinished_tasks

    def swap(self, model: LoadedModel) -> None:
        """Use ``model`` from the next batch on (the current batch finishes with the old one)."""
        with self.cond:
            self._next_model = model
            self.cond.notify_all()

    # -------------------------------------------------------------------------------- scoring

    def _take(self) -> list[tuple[CameraState, Job]]:
        batch: list[tuple[CameraState, Job]] = []
        n = len(self.cameras)
        progress = True
        while len(batch) < self.cfg.max_batch and progress:
            progress = False
            for i in range(n):
                cam = self.cameras[(self._rr + i) % n]
                if len(batch) >= self.cfg.max_batch:
                    break
                job = cam.pop()
                if job is not None:
                    batch.append((cam, job))
                    progress = True
            self._rr = (self._rr + 1) % max(n, 1)
        return batch

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.stop.is_set() and not any(c.depth() for c in self.cameras):
                    if self._next_model is not None:
                        break
                    self.cond.wait(0.5)
                if self._next_model is not None:
                    old, self.model, self._next_model = self.model, self._next_model, None
                    self.model_error = None
                    if old is not None and old is not self.model:
                        self.pipeline.retire(old)
                batch = self._take()
                if not batch and self.stop.is_set():
                    return
                self.cond.notify_all()  # room in the queues for paced captures
                model = self.model
                self.in_flight = [job for _, job in batch]
                self.busy_since = time.monotonic()
            try:
                if batch:
                    self._score(batch, model)
            except Exception:  # never let one batch kill the group: its parts become UNKNOWN
                log.exception("inference group %s: unexpected error", self.key)
                for cam, job in batch:
                    job.unknown = (
                        "inference_error",
                        "unexpected error in the inference thread (see the log)",
                    )
                    self.pipeline.resolve_unknown(job, cam, model)
            finally:
                with self.cond:
                    self.in_flight = []
                    self.busy_since = None
                    self.batches += 1

    def _score(self, batch: list[tuple[CameraState, Job]], model: LoadedModel | None) -> None:
        """Check, preprocess and score a batch; its outcomes go to the post-processing thread in the
        batch's order (an UNKNOWN part never overtakes a part acquired before it)."""
        t_start = time.monotonic()
        entries: list[_Entry] = []
        images: list[np.ndarray] = []
        for cam, job in batch:
            frame = job.frame
            if job.unknown is not None:
                pass
            elif model is None:
                job.unknown = ("no_model", self.model_error or "no model is loaded for this camera")
            elif frame is None or frame.image is None:
                job.unknown = ("bad_frame", (frame.error if frame is not None else None) or "no image")
            elif t_start - job.t_mono > cam.cfg.max_frame_age_s:
                age = t_start - job.t_mono
                job.unknown = (
                    "stale",
                    f"frame was {age:.1f} s old (max_frame_age_s {cam.cfg.max_frame_age_s})",
                )
            elif not _size_ok(cam.cfg, frame.image):
                h, w = frame.image.shape[:2]
                s = cam.cfg.source
                job.unknown = (
                    "bad_frame",
                    f"frame is {w}x{h}, the camera is configured for {s.width}x{s.height}",
                )
            if job.unknown is not None or frame is None or frame.image is None:
                entries.append((cam, job, None))
            else:
                entries.append((cam, job, len(images)))
                images.append(frame.image)
        if not images or model is None:
            self._post.put(_Scored(entries, None, [], model, t_start, t_start, t_start))
            return
        try:
            batch_arr, geoms = preprocess_batch(
                images, model.bundle.preprocess, self._buffer(len(images), model)
            )
        except ValueError:
            # one bad image: score the parts one by one, in order, so only the bad one is UNKNOWN
            for cam, job, idx in entries:
                if idx is None:
                    self._post.put(_Scored([(cam, job, None)], None, [], model, t_start, t_start, t_start))
                else:
                    self._score_one(cam, job, model, t_start)
            return
        self._infer(entries, batch_arr, geoms, model, t_start, time.monotonic())

    def _buffer(self, n: int, model: LoadedModel) -> np.ndarray:
        """The reused input buffer for a batch of ``n`` frames of ``model``'s frame size."""
        h, w = model.bundle.frame_size
        buf = self._buffers.get(n)
        if buf is None or buf.shape != (n, h, w, 3):
            buf = self._buffers[n] = np.empty((n, h, w, 3), dtype=np.uint8)
        return buf

    def _score_one(self, cam: CameraState, job: Job, model: LoadedModel, t_start: float) -> None:
        assert job.frame is not None and job.frame.image is not None
        try:
            arr, geoms = preprocess_batch([job.frame.image], model.bundle.preprocess)
        except ValueError as err:
            job.unknown = ("bad_frame", f"frame cannot be preprocessed: {err}")
            self._post.put(_Scored([(cam, job, None)], None, [], model, t_start, t_start, t_start))
            return
        self._infer([(cam, job, 0)], arr, geoms, model, t_start, time.monotonic())

    def _infer(
        self,
        entries: list[_Entry],
        batch: np.ndarray,
        geoms: list[Geometry],
        model: LoadedModel,
        t_start: float,
        t_pre: float,
    ) -> None:
        try:
            with model.lock:
                scores = model.backend.infer(batch, geoms)
        except Exception as err:  # an inference failure is UNKNOWN for these parts, never a PASS
            self.errors += 1
            self.pipeline.note_inference_error(self.key, err)
            failed: list[_Entry] = []
            for cam, job, idx in entries:
                if idx is not None:
                    job.unknown = ("inference_error", f"{type(err).__name__}: {err}")
                failed.append((cam, job, None))
            self._post.put(_Scored(failed, None, [], model, t_start, t_pre, time.monotonic()))
            return
        self.pipeline.clear_inference_error(self.key)
        self._post.put(_Scored(entries, scores, geoms, model, t_start, t_pre, time.monotonic()))

    def _post_run(self) -> None:
        while True:
            item = self._post.get()
            try:
                if item is None:
                    return
                self._results(item)
            except Exception:  # never lose the thread: these parts become UNKNOWN
                log.exception("inference group %s: post-processing failed", self.key)
                for cam, job, _ in item.entries if item is not None else []:
                    job.unknown = ("inference_error", "post-processing failed (see the log)")
                    self.pipeline.resolve_unknown(job, cam, item.model if item is not None else None)
            finally:
                self._post.task_done()

    def stop_post(self, timeout: float) -> None:
        """End the post-processing thread once every scored batch has its results."""
        self._post.put(None)
        self.post_thread.join(timeout)

    def _results(self, item: _Scored) -> None:
        model, t_start, t_pre, t_inf = item.model, item.t_start, item.t_pre, item.t_inf
        for cam, job, idx in item.entries:
            if idx is None or item.scores is None or model is None:
                self.pipeline.resolve_unknown(job, cam, model)
                continue
            t0 = time.monotonic()
            score = float(item.scores.score[idx])
            threshold, source = cam.threshold_for(model)
            decision = verdict(score, threshold)
            amap, geom = item.scores.anomaly_map[idx], item.geoms[idx]
            out = Outcome(
                job, decision, score, threshold, source, model=model, anomaly_map=amap, geometry=geom
            )
            if decision == UNKNOWN:
                out.score = None
                out.reason, out.detail = "non_finite_score", f"the model produced a score of {score}"
            elif np.isfinite(model.pixel_threshold):
                out.regions = find_regions(amap, geom, model.pixel_threshold)
            out.latency = {
                "queue": max(0.0, t_start - job.t_mono),
                "preprocess": t_pre - t_start,
                "infer": t_inf - t_pre,
                "post": time.monotonic() - t0,
            }
            self.pipeline.resolve(out)


def _size_ok(cfg: CameraSection, image: np.ndarray) -> bool:
    s = cfg.source
    h, w = image.shape[:2]
    return (s.width is None or s.width == w) and (s.height is None or s.height == h)


class CaptureWorker:
    """Reads one camera in its own thread and feeds its inference group.

    Args:
        cam: the camera's state.
        group: its inference group.
        cfg: pipeline settings (reconnect backoff).
        pipeline: the owning pipeline (metrics, unknown outcomes).
        open_fn: builds the source (default :func:`edge.sources.open_source`).
    """

    def __init__(
        self,
        cam: CameraState,
        group: InferenceGroup,
        cfg: PipelineSection,
        pipeline: Pipeline,
        open_fn: Callable[..., Source] = open_source,
    ) -> None:
        self.cam = cam
        self.group = group
        self.cfg = cfg
        self.pipeline = pipeline
        self.open_fn = open_fn
        self.replay = _is_replay(cam.cfg)
        self.stop = threading.Event()
        self.source: Source | None = None
        self.thread = threading.Thread(target=self._run, name=f"capture[{cam.name}]", daemon=True)

    def _set_state(self, state: str, detail: str | None) -> None:
        cam = self.cam
        with cam.lock:
            changed = (cam.state, cam.detail) != (state, detail)
            cam.state, cam.detail = state, detail
        if changed:
            (log.warning if state == "down" else log.info)(
                "camera %s: %s%s", cam.name, state, f" ({detail})" if detail else ""
            )
            self.pipeline.camera_state_changed(cam)

    def _open(self) -> bool:
        try:
            self.source = self.open_fn(self.cam.name, self.cam.cfg.source, triggered=self.cam.triggered)
        except SourceError as err:
            self._set_state("down", str(err))
            return False
        self.cam.source_info = self.source.describe()
        self._set_state("running", None)
        return True

    def _close(self) -> None:
        if self.source is not None:
            try:
                self.source.close()
            except Exception:  # closing a lost camera may fail too; it is gone either way
                log.debug("camera %s: close failed", self.cam.name, exc_info=True)
            self.source = None

    def _run(self) -> None:
        cam, backoff = self.cam, self.cfg.reconnect_min_s
        first = True
        while not self.stop.is_set():
            cam.last_progress = time.monotonic()
            if self.source is None:
                if not first:
                    cam.reconnects += 1
                    self.pipeline.count_reconnect(cam.name)
                first = False
                if not self._open():
                    self.pipeline.fail_pending_triggers(cam)
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, self.cfg.reconnect_max_s)
                    continue
                backoff = self.cfg.reconnect_min_s
            try:
                self._pump()
            except SourceError as err:
                self._close()
                self._set_state("down", str(err))
                self.pipeline.fail_pending_triggers(cam)
            except EndOfStream:
                self._close()
                cam.ended = True
                self._set_state("down", "end of stream (the replay has no more frames)")
                return
        self._close()

    def _pump(self) -> None:
        """Carry out pending triggers, read one frame (or time out), hand it on."""
        cam, source = self.cam, self.source
        assert source is not None
        while cam.triggers:
            cam.triggers.popleft()
            source.trigger()
        frame = source.read(_READ_SLICE_S)
        cam.last_progress = time.monotonic()
        dropped = source.dropped
        if dropped:
            source.dropped -= dropped  # not reset to 0: the source's reader thread may be adding to it
            self.pipeline.count_drop(cam.name, "source_dropped", dropped)
            cam.dropped["source_dropped"] += dropped
        if frame is None:
            return
        cam.frames += 1
        self.pipeline.count_frame(cam.name)
        job = Job(cam.name, frame, str(frame.acquisition_id), frame.t_capture, frame.t_mono)
        if cam.paused:
            if cam.triggered:
                job.unknown = (
                    "paused",
                    "inspection of this camera is paused (resume over the control socket)",
                )
                self.pipeline.resolve_unknown(job, cam, self.group.model)
            else:
                cam.dropped["paused"] += 1
            return
        self.group.put(cam, job, wait=self.replay, stop=self.stop)


class Pipeline:
    """The cameras, their capture threads and the inference groups; outcomes go to ``on_outcome``.

    Args:
        cameras: per camera: its state and the model key of its group.
        groups: the inference groups by key.
        cfg: pipeline settings.
        on_outcome: called once per part, from a pipeline thread, with its :class:`Outcome`.
        hooks: optional callables for metrics (``count_frame``, ``count_drop``, ``count_reconnect``,
            ``camera_state``, ``inference_error``).
    """

    def __init__(
        self,
        cfg: PipelineSection,
        on_outcome: Callable[[Outcome], None],
        hooks: dict[str, Callable[..., None]] | None = None,
        open_fn: Callable[..., Source] = open_source,
    ) -> None:
        self.cfg = cfg
        self.on_outcome = on_outcome
        self.hooks = hooks or {}
        self.open_fn = open_fn
        self.cameras: dict[str, CameraState] = {}
        self.groups: dict[str, InferenceGroup] = {}
        self.group_of: dict[str, str] = {}
        self.captures: dict[str, CaptureWorker] = {}
        self.inference_errors: dict[str, str] = {}
        self._resolve_lock = threading.Lock()
        self._retired: list[LoadedModel] = []

    # ------------------------------------------------------------------------- building

    def add_group(
        self, key: str, model: LoadedModel | None, model_error: str | None = None
    ) -> InferenceGroup:
        group = InferenceGroup(key, model, [], self, self.cfg, model_error)
        self.groups[key] = group
        return group

    def add_camera(self, cfg: CameraSection, group_key: str) -> CameraState:
        cam = CameraState(cfg, self.cfg.queue_size)
        self.cameras[cam.name] = cam
        self.group_of[cam.name] = group_key
        self.groups[group_key].cameras.append(cam)
        self.captures[cam.name] = CaptureWorker(cam, self.groups[group_key], self.cfg, self, self.open_fn)
        return cam

    def start(self) -> None:
        for group in self.groups.values():
            group.thread.start()
            group.post_thread.start()
        for cap in self.captures.values():
            cap.thread.start()

    def group(self, camera: str) -> InferenceGroup:
        return self.groups[self.group_of[camera]]

    # ------------------------------------------------------------------------- outcomes

    def resolve(self, out: Outcome) -> None:
        """Hand ``out`` on, unless its part was already resolved (e.g. as a timeout)."""
        with self._resolve_lock:
            if out.job.resolved:
                return
            out.job.resolved = True
        try:
            self.on_outcome(out)
        except Exception:  # the publisher side must never take the pipeline down
            log.exception("camera %s: publishing a result failed", out.job.camera)

    def resolve_unknown(self, job: Job, cam: CameraState, model: LoadedModel | None) -> None:
        reason, detail = job.unknown or ("inference_error", "unknown")
        threshold, source = cam.threshold_for(model)
        self.resolve(Outcome(job, UNKNOWN, None, threshold, source, reason, detail, model))

    def trigger(self, camera: str) -> str:
        """A software trigger: ``"queued"``, or ``"camera_down"`` (published UNKNOWN right away).

        Raises:
            KeyError: unknown camera. SourceError: the source has no software trigger.
        """
        cam = self.cameras[camera]
        cap = self.captures[camera]
        with cam.lock:
            cam.trigger_count += 1
            n, state = cam.trigger_count, cam.state
        if state != "running" or cap.source is None:
            now = time.time()
            job = Job(camera, None, f"trigger-{n}", now, time.monotonic())
            job.unknown = ("camera_down", f"camera is {state}: {cam.detail or 'not connected'}")
            self.resolve_unknown(job, cam, self.group(camera).model)
            return "camera_down"
        if not cap.source.supports_trigger:
            raise SourceError(f"camera {camera}: the {cap.source.kind} source has no software trigger")
        cam.triggers.append(time.monotonic())
        return "queued"

    def fail_pending_triggers(self, cam: CameraState) -> None:
        """Triggers that a lost camera can no longer serve are published as UNKNOWN ``camera_down``."""
        while cam.triggers:
            cam.triggers.popleft()
            with cam.lock:
                cam.trigger_count += 1
                n = cam.trigger_count
            job = Job(cam.name, None, f"trigger-{n}", time.time(), time.monotonic())
            job.unknown = ("camera_down", f"camera lost before the trigger was served: {cam.detail}")
            self.resolve_unknown(job, cam, self.group(cam.name).model)

    def check_timeouts(self, timeout_s: float) -> list[str]:
        """Resolve parts whose inference has run longer than ``timeout_s`` as UNKNOWN ``timeout``.

        Returns:
            The keys of the groups that are stuck.
        """
        stuck = []
        now = time.monotonic()
        for key, group in self.groups.items():
            with group.cond:
                since, jobs = group.busy_since, list(group.in_flight)
            if since is None or now - since <= timeout_s:
                continue
            stuck.append(key)
            for job in jobs:
                if not job.resolved:
                    job.unknown = ("timeout", f"inference took longer than {timeout_s:g} s")
                    self.resolve_unknown(job, self.cameras[job.camera], group.model)
        return stuck

    def retire(self, model: LoadedModel) -> None:
        """A model swapped out: closed once nothing scores with it."""
        self._retired.append(model)
        for old in list(self._retired):
            if not old.lock.locked():
                old.close()
                self._retired.remove(old)

    # ------------------------------------------------------------------------- hooks

    def _hook(self, name: str, *args: Any) -> None:
        fn = self.hooks.get(name)
        if fn is not None:
            fn(*args)

    def count_frame(self, camera: str) -> None:
        self._hook("count_frame", camera)

    def count_drop(self, camera: str, reason: str, n: int = 1) -> None:
        self._hook("count_drop", camera, reason, n)

    def count_reconnect(self, camera: str) -> None:
        self._hook("count_reconnect", camera)

    def camera_state_changed(self, cam: CameraState) -> None:
        self._hook("camera_state", cam)

    def note_inference_error(self, key: str, err: BaseException) -> None:
        first = key not in self.inference_errors
        self.inference_errors[key] = f"{type(err).__name__}: {err}"
        if first:
            log.error("inference group %s: inference failed: %s", key, self.inference_errors[key])

    def clear_inference_error(self, key: str) -> None:
        if self.inference_errors.pop(key, None) is not None:
            log.info("inference group %s: inference works again", key)

    # ------------------------------------------------------------------------- shutdown

    def stop_capture(self, timeout: float) -> None:
        """Stop every capture thread (no new parts); a thread stuck in a driver call is left behind."""
        for cap in self.captures.values():
            cap.stop.set()
        deadline = time.monotonic() + timeout
        for cap in self.captures.values():
            cap.thread.join(max(0.0, deadline - time.monotonic()))

    def drain(self, deadline: float) -> int:
        """Let the groups score what is queued until ``deadline`` (monotonic); the rest is UNKNOWN
        ``shutdown``. Returns the number of parts resolved as ``shutdown``."""
        while time.monotonic() < deadline and any(g.pending() for g in self.groups.values()):
            time.sleep(0.02)
        left = 0
        for group in self.groups.values():
            group.stop.set()
            with group.cond:
                group.cond.notify_all()
                jobs = [(c, j) for c in group.cameras for j in [*c.queue, *([c.latest] if c.latest else [])]]
                for c in group.cameras:
                    c.queue.clear()
                    c.latest = None
                jobs += [(self.cameras[j.camera], j) for j in group.in_flight]
            for cam, job in jobs:
                if not job.resolved:
                    job.unknown = ("shutdown", "the daemon stopped before the part was scored")
                    self.resolve_unknown(job, cam, group.model)
                    left += 1
        for group in self.groups.values():
            group.thread.join(max(0.1, deadline - time.monotonic()))
            if not group.thread.is_alive():
                group.stop_post(max(0.1, deadline - time.monotonic()))
        return left

    def close_models(self) -> None:
        for group in self.groups.values():
            if group.model is not None:
                group.model.close()
        for old in self._retired:
            old.close()
        self._retired.clear()
