"""A line's parts: the model store, training-image collection and training jobs (the retraining commands).

:class:`PartsService` carries out the control requests ``collect``, ``import``, ``train``, ``cancel``,
``promote``, ``rollback`` and ``parts`` for the daemon (:mod:`edge.daemon` delegates to it), sees every
published frame (:meth:`PartsService.offer`: collection and shadow runs), and reports jobs and
collections in ``status`` and metrics. The store is :mod:`edge.store`, the images :mod:`edge.collect`,
the jobs :mod:`edge.retrain`; a promotion or rollback reloads the part's cameras through the daemon's own
model swap (between two frames).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.collect import Collector, import_evidence, import_folder, review_image
from edge.config import EdgeConfig
from edge.errors import ControlError, EdgeError
from edge.metrics import Metrics
from edge.model import load_model
from edge.pipeline import Pipeline
from edge.retrain import JobState, TrainJob, TrainSettings
from edge.store import ModelStore
from engines.errors import EngineError
from engines.verdict import verdict

__all__ = ["PartsService"]

log = logging.getLogger(__name__)

_FAST_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "masf_lite2_fast.yaml"


class PartsService:
    """The retraining side of one line (no store configured: every command is a clear error).

    Args:
        cfg: the line config (``store`` section, evidence folder).
        pipeline: the cameras (which camera inspects which part).
        metrics: training and collection gauges.
        reload_model: the daemon's ``reload_model(camera, bundle)`` (a hot swap between two frames).
        reload_lock: the daemon's lock that serialises reloads.
    """

    def __init__(
        self,
        cfg: EdgeConfig,
        pipeline: Pipeline,
        metrics: Metrics,
        reload_model: Callable[[str | None, str | None], dict[str, Any]],
        reload_lock: threading.Lock,
    ) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.metrics = metrics
        self._reload_model = reload_model
        self._reload_lock = reload_lock
        self.store: ModelStore | None = None
        self.collector: Collector | None = None
        self.jobs: dict[str, TrainJob] = {}
        self.interrupted: list[dict[str, str]] = []
        self._job_ids = itertools.count(1)
        self._shadow_taps: dict[str, queue.Queue[tuple[np.ndarray, str, float]]] = {}
        if cfg.store.dir:
            self.store = ModelStore(cfg.store.dir, cfg.store.keep)
            for part, version in self.store.recover():
                log.warning(
                    "part %s: training of %s was interrupted by a stop; its files are removed", part, version
                )
                self.interrupted.append({"part": part, "version": version, "state": "interrupted"})
            self.collector = Collector(self.store)

    def offer(
        self, camera: str, image: np.ndarray, acquisition_id: str, verdict_: str, score: float | None
    ) -> None:
        """One published frame of ``camera`` (from the publishing thread; never blocks)."""
        if self.collector is not None and self.collector.wants(camera):
            self.collector.offer(camera, image, acquisition_id)
        tap = self._shadow_taps.get(camera)
        if tap is not None and score is not None:
            with contextlib.suppress(queue.Full):  # the shadow run takes what it can keep up with
                tap.put_nowait((image, verdict_, score))

    def update_metrics(self) -> None:
        for job in list(self.jobs.values()):
            s = job.snapshot()
            self.metrics.set_training(s["part"], s["finished"] is None, s["epoch"], s["epochs"], s["eta_s"])
        if self.collector is not None:
            for cam, c in self.collector.progress()["active"].items():
                self.metrics.set_collect_left(cam, c["left"])

    def status(self) -> dict[str, Any]:
        return {
            "jobs": {k: j.snapshot() for k, j in self.jobs.items()},
            "interrupted_jobs": list(self.interrupted),
            "collect": self.collector.progress() if self.collector else None,
        }

    def cancel_all(self) -> None:
        for job in self.jobs.values():
            job.cancel()  # a training in flight is abandoned (its .incoming folder is removed)

    def close(self, timeout: float) -> None:
        if self.collector is not None:
            self.collector.close(1.0)
        for job in self.jobs.values():
            job.thread.join(timeout)

    def _need_store(self) -> ModelStore:
        if self.store is None:
            raise ControlError("no model store on this line: set store.dir in the line config")
        return self.store

    def _cameras_of(self, part: str) -> list[str]:
        store = self._need_store()
        current = str(store.current_path(part))
        return [name for name, cam in self.pipeline.cameras.items() if cam.cfg.bundle == current]

    def collect(self, camera: str, part: str, count: int) -> dict[str, Any]:
        if camera not in self.pipeline.cameras:
            raise ControlError(f"unknown camera {camera!r}: cameras are {sorted(self.pipeline.cameras)}")
        self._need_store()
        assert self.collector is not None
        try:
            return {"collect": self.collector.start(camera, part, count)}
        except EdgeError as err:
            raise ControlError(str(err)) from None

    def import_images(self, part: str, dir: str | None, evidence: str | None, kind: str) -> dict[str, Any]:
        store = self._need_store()
        try:
            if dir is not None:
                return {"imported": import_folder(store, part, dir), "part": part}
            if not self.cfg.evidence.dir:
                raise ControlError("no evidence store on this line (evidence.dir)")
            assert evidence is not None
            return {
                "imported": import_evidence(store, part, self.cfg.evidence.dir, evidence, kind),
                "part": part,
            }
        except EdgeError as err:
            raise ControlError(str(err)) from None
        except OSError as err:
            raise ControlError(
                f"import failed: {err.strerror or err}: nothing in the store was changed"
            ) from None

    def _settings(self) -> TrainSettings:
        s = self.cfg.store
        return TrainSettings(
            train_config=Path(s.train_config) if s.train_config else _FAST_CONFIG,
            min_images=s.min_images,
            nice=s.nice,
            threads=s.threads,
            shadow_frames=s.shadow_frames,
            shadow_timeout_s=s.shadow_timeout_s,
            max_calib_frr=s.max_calib_frr,
            max_escape_rate=s.max_escape_rate,
            min_agreement=s.min_agreement,
            signing_key=Path(s.signing_key) if s.signing_key else None,
        )

    def train(self, part: str, config: str | None) -> dict[str, Any]:
        store = self._need_store()
        if self.cfg.security.require_signed_bundles and not self.cfg.store.signing_key:
            raise ControlError(
                "this line only loads signed bundles: set store.signing_key (an ed25519 private key whose "
                "public key is in security.trusted_keys) to train here"
            )
        try:
            store.images_dir(part, "good")
        except EdgeError as err:
            raise ControlError(str(err)) from None
        if (running := self._running_job(part)) is not None:
            raise ControlError(f"part {part} is already being trained (job {running}): wait or cancel it")
        if config is not None and not Path(config).is_file():
            raise ControlError(f"train: config file {config} not found")
        n = sum(1 for _ in store.images_dir(part, "good").glob("*.png"))
        if n < self.cfg.store.min_images:
            raise ControlError(
                f"part {part}: {n} good image(s), at least {self.cfg.store.min_images} are needed: "
                "collect or import more"
            )
        job_id = f"{part}-{next(self._job_ids)}"
        settings = self._settings()
        job = TrainJob(
            job_id, part, store, settings, config, shadow=self._shadow(part), on_done=self._job_done
        )
        self.jobs[job_id] = job.start()
        log.info("training job %s for part %s started", job_id, part)
        return {"job": job_id, "part": part}

    def _running_job(self, part: str) -> str | None:
        return next(
            (j.state.job for j in self.jobs.values() if j.state.part == part and j.state.finished is None),
            None,
        )

    def review(self, part: str, image: str, verdict: str, retrain: bool) -> dict[str, Any]:
        """An operator's verdict on a good image (:func:`~edge.collect.review_image`); ``retrain``: then
        start a training job (its error, e.g. too few good images left, is in ``retrain_error``: the
        verdict stands)."""
        store = self._need_store()
        running = self._running_job(part)
        if running is not None and verdict == "defect":
            raise ControlError(
                f"part {part} is being trained (job {running}) on its good images: wait or cancel it, "
                "then review"
            )
        try:
            result = review_image(store, part, image, verdict)
        except EdgeError as err:
            raise ControlError(str(err)) from None
        except OSError as err:
            raise ControlError(f"review failed: {err.strerror or err}: the image was not moved") from None
        if retrain:
            try:
                result["job"] = self.train(part, None)["job"]
            except ControlError as err:
                result["job"], result["retrain_error"] = None, str(err)
        return result

    def cancel(self, job: str) -> dict[str, Any]:
        found = self.jobs.get(job)
        if found is None:
            raise ControlError(f"unknown job {job!r}: jobs are {sorted(self.jobs)}")
        found.cancel()
        return {"job": job, "cancelling": found.state.finished is None}

    def _job_done(self, state: JobState) -> None:
        self.metrics.set_training(state.part, False, state.epoch, state.epochs, None)
        if state.state == "done" and state.passed and self.cfg.store.auto_promote and state.version:
            try:
                self.promote(state.part, state.version, by="auto_promote")
            except ControlError as err:
                log.error("auto-promotion of %s %s failed: %s", state.part, state.version, err)

    def _shadow(self, part: str) -> Callable[[Path, int, float], dict[str, Any] | None]:
        def run(bundle_dir: Path, frames: int, timeout: float) -> dict[str, Any] | None:
            # only cameras with a live model of this part: a first version has nothing to compare with
            cams = [c for c in self._cameras_of(part) if self.pipeline.group(c).model is not None]
            if not cams or frames <= 0:
                return None
            cam = cams[0]
            model = load_model(bundle_dir, "onnxruntime", threads=1, warmup=False)
            tap: queue.Queue[tuple[np.ndarray, str, float]] = queue.Queue(maxsize=max(4, frames))
            self._shadow_taps[cam] = tap
            live: list[float] = []
            cand: list[float] = []
            agree = 0
            deadline = time.monotonic() + timeout
            try:
                while len(live) < frames and time.monotonic() < deadline:
                    try:
                        image, live_verdict, live_score = tap.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    score = float(model.backend.infer([image]).score[0])
                    agree += verdict(score, model.threshold) == live_verdict
                    live.append(live_score)
                    cand.append(score)
            finally:
                self._shadow_taps.pop(cam, None)
                model.close()

            def stats(v: list[float]) -> dict[str, float] | None:
                if not v:
                    return None
                a = np.asarray(v)
                return {
                    k: round(float(f(a)), 6)
                    for k, f in (("mean", np.mean), ("p50", np.median), ("max", np.max))
                }

            return {
                "camera": cam,
                "frames": len(live),
                "agreement": agree / len(live) if live else None,
                "live_scores": stats(live),
                "candidate_scores": stats(cand),
            }

        return run

    def promote(self, part: str, version: str, by: str = "operator") -> dict[str, Any]:
        store = self._need_store()
        try:
            replaced = store.promote(part, version, by=by)
        except (EdgeError, EngineError) as err:
            raise ControlError(f"promote refused, the live model stays: {err}") from None
        cams = self._cameras_of(part)
        swapped = self._reload_part(cams)
        log.warning("part %s: %s promoted (was %s) on %s", part, version, replaced or "none", cams)
        return {
            "part": part,
            "version": version,
            "replaced": replaced or None,
            "cameras": cams,
            "reloaded": swapped,
        }

    def rollback(self, part: str) -> dict[str, Any]:
        store = self._need_store()
        try:
            version = store.rollback(part)
        except EdgeError as err:
            raise ControlError(str(err)) from None
        cams = self._cameras_of(part)
        self._reload_part(cams)
        log.warning("part %s rolled back to %s on %s", part, version, cams)
        return {"part": part, "version": version, "cameras": cams}

    def _reload_part(self, cams: list[str]) -> list[dict[str, Any]]:
        swapped: list[dict[str, Any]] = []
        with self._reload_lock:
            for cam in cams:
                swapped += self._reload_model(cam, None)["reloaded"]
        return swapped

    def parts(self, part: str | None) -> dict[str, Any]:
        store = self._need_store()
        names = [part] if part is not None else store.parts()
        try:
            described = {p: {**store.describe(p), "history": store.history(p)[-20:]} for p in names}
        except EdgeError as err:
            raise ControlError(str(err)) from None
        return {"parts": described, "jobs": {k: j.snapshot() for k, j in self.jobs.items()}}
