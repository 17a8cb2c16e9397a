"""The edge daemon: wires config, models, cameras, publisher, control socket, metrics and evidence.

:class:`Daemon` owns every part and answers the control requests (it is the
:class:`~edge.control.ControlHandler`). It has no main loop of its own: :mod:`edge.service` calls
:meth:`Daemon.start`, then :meth:`Daemon.tick` a few times a second (heartbeats, inference timeouts,
degraded states, metrics), and :meth:`Daemon.shutdown` with a deadline.

Outcomes become results here (:meth:`Daemon.on_outcome`): a per-camera sequence number, the header of
``docs/protocol.md``, the heatmap PNG by the configured policy, the evidence store for FAIL / UNKNOWN,
metrics, and the camera's ``last`` result (the control socket's answer to a subscriber that saw a gap).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from edge import protocol
from edge.config import CameraSection, EdgeConfig, load_edge_config
from edge.control import ControlServer
from edge.errors import ControlError, SourceError
from edge.evidence import EvidenceStore
from edge.keys import Authenticator, CurveServer
from edge.metrics import Metrics, MetricsServer
from edge.model import LoadedModel, load_model
from edge.parts import PartsService
from edge.pipeline import CameraState, Outcome, Pipeline
from edge.publish import Publisher
from edge.regions import heatmap_u8
from edge.sources import open_source
from edge.sources.base import Source
from engines.errors import EngineError
from engines.verdict import FAIL, UNKNOWN

__all__ = ["Daemon", "model_key"]

log = logging.getLogger(__name__)


def model_key(cam: CameraSection) -> str:
    """Cameras with the same bundle, backend and threads share one model and one inference thread."""
    return f"{cam.bundle}|{cam.backend}|{cam.threads}"


class _Rate:
    """Results per second over a sliding window."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self.times: collections.deque[float] = collections.deque()

    def add(self, t: float) -> None:
        self.times.append(t)

    def value(self, now: float) -> float:
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()
        return len(self.times) / self.window_s


class Daemon:
    """One production line's inspection service.

    Args:
        cfg: the validated line config.
        config_path: where it came from (``reload config`` re-reads it); None: no config reload.
        overrides: the ``--set`` overrides, applied again on reload.
        open_fn: builds camera sources (tests may pass a wrapper; default :func:`open_source`).
    """

    def __init__(
        self,
        cfg: EdgeConfig,
        config_path: Path | None = None,
        overrides: list[str] | None = None,
        open_fn: Callable[..., Source] = open_source,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = list(overrides or [])
        self.started = time.time()
        self.state = "starting"
        self.context = zmq.Context()
        self.metrics = Metrics()
        self.publisher: Publisher | None = None
        self.control: ControlServer | None = None
        self.metrics_server: MetricsServer | None = None
        self.evidence: EvidenceStore | None = None
        self.auth: Authenticator | None = None
        self.pipeline = Pipeline(
            cfg.pipeline,
            self.on_outcome,
            hooks={
                "count_frame": self.metrics.count_frame,
                "count_drop": self.metrics.drop_frame,
                "count_reconnect": self.metrics.reconnect,
                "camera_state": self._camera_state,
            },
            open_fn=open_fn,
        )
        self._lock = threading.Lock()
        self._seq: dict[str, int] = {}
        self._last: dict[str, dict[str, Any]] = {}
        self._rates: dict[str, _Rate] = {}
        self._counts: dict[str, collections.Counter[str]] = {}
        self._heartbeat_due = 0.0
        self._heartbeat_sent: dict[str, str] = {}  # each camera's state in the last heartbeat
        self._degraded: dict[str, str] = {}
        self._reload_lock = threading.Lock()
        self.stuck_threads: list[str] = []
        self.parts_service = PartsService(
            cfg, self.pipeline, self.metrics, self.reload_model, self._reload_lock
        )

    # ------------------------------------------------------------------------------ start-up

    def _curve(self) -> CurveServer | None:
        sec = self.cfg.security
        if not sec.curve:
            return None
        assert sec.server_secret_key is not None
        return CurveServer(sec.server_secret_key, sec.client_public_keys)

    def _trusted(self) -> list[str] | None:
        sec = self.cfg.security
        return list(sec.trusted_keys) if sec.require_signed_bundles else None

    def _load(self, cam: CameraSection) -> LoadedModel:
        return load_model(cam.bundle, cam.backend, cam.threads, self._trusted(), self.cfg.pipeline.warmup)

    def start(self, ready_timeout_s: float = 30.0) -> None:
        """Bind the sockets, load every model (warm-up included), start the cameras and wait until each
        camera is connected or known to be down.

        Raises:
            EdgeError: a socket cannot be bound, keys cannot be read, the evidence folder is unusable.
            (A model that cannot be loaded is not fatal: its cameras publish UNKNOWN ``no_model`` and the
            daemon is degraded; ``masf-edge check`` reports it before deployment.)
        """
        cfg = self.cfg
        curve = self._curve()
        if curve is not None:
            self.auth = Authenticator(self.context, curve).start()
        self.publisher = Publisher(self.context, cfg.publish.address, cfg.publish.sndhwm, curve=curve).start()
        if cfg.evidence.dir:
            self.evidence = EvidenceStore(
                Path(cfg.evidence.dir),
                int(cfg.evidence.max_mb * 1e6),
                cfg.evidence.max_age_days * 86400,
                min_free_bytes=int(cfg.evidence.min_free_mb * 1e6),
            )
        for cam in cfg.cameras:
            key = model_key(cam)
            if key not in self.pipeline.groups:
                try:
                    model: LoadedModel | None = self._load(cam)
                    error = None
                except EngineError as err:
                    model, error = None, str(err)
                    log.error("camera %s: no model: %s", cam.name, err)
                self.pipeline.add_group(key, model, error)
            self.pipeline.add_camera(cam, key)
            self._seq[cam.name] = 0
            self._rates[cam.name] = _Rate()
            self._counts[cam.name] = collections.Counter()
            self.metrics.add_camera(cam.name)
        for name, cam_state in self.pipeline.cameras.items():
            model = self.pipeline.group(name).model
            if model is not None:
                self.metrics.set_model(name, model.part, model.model_version, model.bundle_id)
            self.metrics.set_threshold(name, cam_state.threshold_for(model)[0])
        self.control = ControlServer(
            self.context, cfg.control.address, self, cfg.control.max_request_bytes, curve=curve
        ).start()
        if cfg.metrics.enabled:
            self.metrics_server = MetricsServer(
                self.metrics, cfg.metrics.host, cfg.metrics.port, health=self.health, ready=self.ready
            ).start()
        wait = cfg.publish.wait_for_subscribers
        if wait and not self.publisher.wait_for_subscribers(wait, cfg.publish.wait_timeout_s):
            log.warning(
                "starting the cameras without %d subscriber(s): none within %g s",
                wait,
                cfg.publish.wait_timeout_s,
            )
        elif wait:
            time.sleep(0.05)  # the subscription is registered: let its pipe settle before the first part
        self.pipeline.start()
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if all(c.state != "starting" for c in self.pipeline.cameras.values()):
                break
            time.sleep(0.02)
        self.state = "running"
        self._update_degraded()
        log.info("line %s: %s", cfg.line, self.status_line())

    # ------------------------------------------------------------------------------ results

    def _heatmap_wanted(self, verdict: str, seq: int) -> bool:
        policy = self.cfg.publish.heatmaps
        if policy == "always":
            return True
        if policy == "never":
            return False
        if verdict in (FAIL, UNKNOWN):
            return True
        return policy == "every_n" and seq % self.cfg.publish.heatmap_every == 0

    def on_outcome(self, out: Outcome) -> None:
        """Publish one resolved part (called from pipeline threads; sequence numbers under a lock)."""
        t0 = time.monotonic()
        job, model = out.job, out.model
        heat: np.ndarray | None = None
        heat_info = protocol.heatmap_info("none")
        image = job.frame.image if job.frame is not None else None
        shape = image.shape[:2] if image is not None else None
        wanted = self.cfg.publish.heatmaps != "never" or (self.evidence and out.verdict != "PASS")
        if out.anomaly_map is not None and out.geometry is not None and model is not None and wanted:
            heat = heatmap_u8(out.anomaly_map, out.geometry, model.heat_lo, model.heat_hi)
        png = b""
        if heat is not None and (self.cfg.publish.heatmaps == "always" or out.verdict != "PASS"):
            png = protocol.encode_heatmap(heat)  # outside the lock: the common cases
        with self._lock:  # sequence numbers and the order of messages per camera
            self._seq[job.camera] += 1
            seq = self._seq[job.camera]
            payload = b""
            if heat is not None and model is not None and self._heatmap_wanted(out.verdict, seq):
                payload = png or protocol.encode_heatmap(heat)
                heat_info = protocol.heatmap_info("png", heat.shape, model.heat_lo, model.heat_hi)
            latency = {k: v * 1000.0 for k, v in out.latency.items()}
            latency["publish"] = (time.monotonic() - t0) * 1000.0
            latency["total"] = (time.monotonic() - job.t_mono) * 1000.0
            header = protocol.result_header(
                line=self.cfg.line,
                camera=job.camera,
                seq=seq,
                started=self.started,
                acquisition_id=job.acquisition_id,
                verdict=out.verdict,
                score=out.score,
                threshold=out.threshold if np.isfinite(out.threshold) else 0.0,
                threshold_source=out.threshold_source,
                frame_shape=shape,  # None: the part has no usable image (UNKNOWN)
                capture=job.t_capture,
                published=time.time(),
                latency_ms=latency,
                heatmap=heat_info,
                regions=[r.to_dict() for r in out.regions],
                reason=out.reason,
                detail=out.detail,
                part=model.part if model is not None else None,
                model_version=model.model_version if model is not None else None,
                bundle_id=model.bundle_id if model is not None else None,
            )
            assert self.publisher is not None
            if not self.publisher.publish(protocol.encode_result(header, payload)):
                self.metrics.count_publish_dropped()
            self._last[job.camera] = header
            self._rates[job.camera].add(time.monotonic())
            self._counts[job.camera][out.verdict] += 1
        stages = {
            "capture_to_queue": out.latency.get("queue", 0.0),
            "preprocess": out.latency.get("preprocess", 0.0),
            "infer": out.latency.get("infer", 0.0),
            "post": out.latency.get("post", 0.0),
            "publish": latency["publish"] / 1000.0,
            "total": latency["total"] / 1000.0,
        }
        self.metrics.observe_result(job.camera, out.verdict, out.reason, stages if out.model else None)
        if image is not None:
            self.parts_service.offer(job.camera, image, job.acquisition_id, out.verdict, out.score)
        if self.evidence is not None and out.verdict in self.cfg.evidence.verdicts:
            evidence_header = {**header, "t_capture": job.t_capture}
            if not self.evidence.submit(evidence_header, image, heat, header["regions"]):
                self.metrics.count_evidence_dropped()

    # ------------------------------------------------------------------------------ periodic

    def _camera_state(self, cam: CameraState) -> None:
        self.metrics.set_camera_up(cam.name, cam.state == "running")

    def _heartbeat_state(self, cam: CameraState) -> str:
        if cam.state == "running" and cam.paused:
            return "paused"
        return cam.state if cam.state in protocol.HEARTBEAT_STATES else "down"

    def _heartbeat_states(self) -> dict[str, str]:
        return {name: self._heartbeat_state(cam) for name, cam in self.pipeline.cameras.items()}

    def heartbeat(self) -> None:
        """One heartbeat message per camera."""
        assert self.publisher is not None
        now = time.monotonic()
        self._heartbeat_sent = states = self._heartbeat_states()
        for name, cam in self.pipeline.cameras.items():
            model = self.pipeline.group(name).model
            with self._lock:
                seq = self._seq[name]
                fps = self._rates[name].value(now)
            header = protocol.heartbeat_header(
                line=self.cfg.line,
                camera=name,
                seq=seq,
                started=self.started,
                time=time.time(),
                state=states[name],
                fps=fps,
                detail=cam.detail,
                model_version=model.model_version if model else None,
                bundle_id=model.bundle_id if model else None,
            )
            if not self.publisher.publish(protocol.encode_heartbeat(header)):
                self.metrics.count_publish_dropped()

    def _update_degraded(self) -> None:
        states: dict[str, str] = {}
        for group in self.pipeline.groups.values():
            if group.model is None:
                names = ", ".join(c.name for c in group.cameras)
                states[f"no_model:{names}"] = group.model_error or "no model loaded"
        for key, err in list(self.pipeline.inference_errors.items()):
            states[f"inference_error:{key}"] = err
        for name, cam in self.pipeline.cameras.items():
            if cam.state == "down" and not cam.ended:
                states[f"camera_down:{name}"] = cam.detail or "down"
        if self.evidence is not None and self.evidence.degraded:
            states[self.evidence.degraded_state or "evidence"] = self.evidence.degraded
        if self.publisher is not None and self.publisher.dropped:
            pass  # counted in metrics; a slow subscriber is not a daemon fault
        changed = set(states) != set(self._degraded)
        self._degraded = states
        if changed:
            if states:
                log.warning("degraded: %s", "; ".join(f"{k} ({v})" for k, v in sorted(states.items())))
            else:
                log.info("no longer degraded")
        self.metrics.set_degraded(sorted(k.split(":")[0] for k in states))

    def tick(self) -> None:
        """Called by the service's main loop a few times a second."""
        stuck = self.pipeline.check_timeouts(self.cfg.pipeline.infer_timeout_s)
        for key in stuck:
            self.pipeline.inference_errors[key] = (
                f"inference has not returned for more than {self.cfg.pipeline.infer_timeout_s:g} s"
            )
        now = time.monotonic()
        # every heartbeat_s, and at once when a camera's state changes (a reader sees "running" or "down"
        # within a tick, not up to a period later)
        if now >= self._heartbeat_due or self._heartbeat_states() != self._heartbeat_sent:
            self._heartbeat_due = now + self.cfg.publish.heartbeat_s
            self.heartbeat()
            self._update_degraded()
            for name, cam in self.pipeline.cameras.items():
                self.metrics.set_queue_depth(name, cam.depth())
            if self.evidence is not None:
                self.metrics.set_evidence_bytes(int(self.evidence.usage().get("bytes", 0)))
            self.parts_service.update_metrics()

    def health(self) -> tuple[bool, str]:
        """Liveness: every thread makes progress (a camera that is down but retrying is healthy)."""
        if self.state == "stopping":
            return True, "stopping"
        stall = self.cfg.pipeline.stall_s
        now = time.monotonic()
        for name, cap in self.pipeline.captures.items():
            if cap.thread.is_alive() and now - cap.cam.last_progress > stall:
                return False, f"camera {name}: capture thread stuck for {now - cap.cam.last_progress:.0f} s"
            if not cap.thread.is_alive() and not cap.cam.ended and self.state == "running":
                return False, f"camera {name}: capture thread died"
        for key, group in self.pipeline.groups.items():
            since = group.busy_since
            if since is not None and now - since > stall:
                return False, f"inference {key}: stuck for {now - since:.0f} s"
            if (not group.thread.is_alive() or not group.post_thread.is_alive()) and self.state == "running":
                return False, f"inference {key}: thread died"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Readiness: started, and no degraded state."""
        if self.state != "running":
            return False, self.state
        if self._degraded:
            return False, "degraded: " + "; ".join(sorted(self._degraded))
        return True, "ok"

    def status_line(self) -> str:
        """One line for systemd's ``STATUS=``."""
        parts = []
        for name, cam in self.pipeline.cameras.items():
            with self._lock:
                fps = self._rates[name].value(time.monotonic())
            parts.append(f"{name} {self._heartbeat_state(cam)} {fps:.1f}/s")
        deg = f"; DEGRADED: {', '.join(sorted(self._degraded))}" if self._degraded else ""
        return f"{self.state}: " + ", ".join(parts) + deg

    # ------------------------------------------------------------------------------ control

    def _camera(self, name: str | None) -> list[CameraState]:
        if name is None:
            return list(self.pipeline.cameras.values())
        cam = self.pipeline.cameras.get(name)
        if cam is None:
            raise ControlError(f"unknown camera {name!r}: cameras are {sorted(self.pipeline.cameras)}")
        return [cam]

    def status(self) -> dict[str, Any]:
        self._update_degraded()
        now = time.monotonic()
        cams: dict[str, Any] = {}
        for name, cam in self.pipeline.cameras.items():
            group = self.pipeline.group(name)
            model = group.model
            thr, src = cam.threshold_for(model)
            with self._lock:
                last = self._last.get(name)
                fps = self._rates[name].value(now)
                counts = dict(self._counts[name])
                seq = self._seq[name]
            cams[name] = {
                "state": self._heartbeat_state(cam),
                "detail": cam.detail,
                "mode": cam.cfg.mode,
                "paused": cam.paused,
                "fps": round(fps, 3),
                "frames": cam.frames,
                "results": counts,
                "seq": seq,
                "dropped": dict(cam.dropped),
                "queue_depth": cam.depth(),
                "reconnects": cam.reconnects,
                "last_verdict": last["verdict"] if last else None,
                "last_result_time": last["timestamps"]["published"] if last else None,
                "threshold": thr if np.isfinite(thr) else None,
                "threshold_source": src,
                "model": model.describe() if model else None,
                "model_error": group.model_error,
                "source": cam.source_info,
            }
        pub = self.publisher
        return {
            "line": self.cfg.line,
            "state": self.state,
            "degraded": dict(self._degraded),
            "started": self.started,
            "uptime_s": round(time.time() - self.started, 3),
            "cameras": cams,
            "publish": {
                "endpoint": pub.endpoint if pub else None,
                "sent": pub.sent if pub else 0,
                "dropped": pub.dropped if pub else 0,
            },
            "evidence": self.evidence.usage() if self.evidence else None,
            **self.parts_service.status(),
        }

    def last(self, camera: str | None) -> dict[str, Any]:
        names = [c.name for c in self._camera(camera)]
        with self._lock:
            return {"results": {n: self._last.get(n) for n in names}}

    def trigger(self, camera: str) -> dict[str, Any]:
        (cam,) = self._camera(camera)
        try:
            outcome = self.pipeline.trigger(cam.name)
        except SourceError as err:
            raise ControlError(str(err)) from None
        return {"camera": cam.name, "trigger": outcome}

    def threshold(self, camera: str, value: float | None, reset: bool) -> dict[str, Any]:
        (cam,) = self._camera(camera)
        model = self.pipeline.group(cam.name).model
        if value is not None and not np.isfinite(value):
            raise ControlError("threshold value must be a finite number")
        with cam.lock:
            if reset:
                cam.threshold_override = cam.cfg.threshold
                cam.threshold_source = "config" if cam.cfg.threshold is not None else "bundle"
            elif value is not None:
                cam.threshold_override = float(value)
                cam.threshold_source = "control"
        thr, src = cam.threshold_for(model)
        if reset or value is not None:
            log.warning("camera %s: threshold set to %g (%s)", cam.name, thr, src)
            self.metrics.set_threshold(cam.name, thr)
        return {
            "camera": cam.name,
            "threshold": thr if np.isfinite(thr) else None,
            "threshold_source": src,
            "bundle_threshold": model.threshold if model else None,
        }

    def pause(self, camera: str | None) -> dict[str, Any]:
        cams = self._camera(camera)
        for cam in cams:
            cam.paused = True
        log.warning("paused: %s", ", ".join(c.name for c in cams))
        return {"paused": [c.name for c in cams]}

    def resume(self, camera: str | None) -> dict[str, Any]:
        cams = self._camera(camera)
        for cam in cams:
            cam.paused = False
        log.info("resumed: %s", ", ".join(c.name for c in cams))
        return {"resumed": [c.name for c in cams]}

    def reload(self, what: str, camera: str | None, bundle: str | None) -> dict[str, Any]:
        if not self._reload_lock.acquire(blocking=False):
            raise ControlError("a reload is already running: wait for it to finish")
        try:
            if what == "config":
                return self.reload_config()
            return self.reload_model(camera, bundle)
        finally:
            self._reload_lock.release()

    def reload_model(self, camera: str | None, bundle: str | None) -> dict[str, Any]:
        """Load (verify, warm up) a model off the hot path, then swap it in between two batches.

        With ``camera`` and ``bundle``: that camera's group gets the bundle at ``bundle``; without
        ``bundle``: the configured bundles are re-read (a new version written in place)."""
        cams = self._camera(camera)
        keys = sorted({self.pipeline.group_of[c.name] for c in cams})
        if bundle is not None and len(keys) != 1:
            raise ControlError("reload with a bundle needs one camera (or cameras sharing one model)")
        swapped = []
        for key in keys:
            group = self.pipeline.groups[key]
            cfg = group.cameras[0].cfg
            if bundle is not None:
                cfg = replace(cfg, bundle=bundle)
            try:
                model = self._load(cfg)
            except EngineError as err:
                raise ControlError(f"reload refused, the current model keeps running: {err}") from None
            group.swap(model)
            for cam in group.cameras:
                self.metrics.set_model(cam.name, model.part, model.model_version, model.bundle_id)
            swapped.append({"cameras": [c.name for c in group.cameras], **model.describe()})
            log.warning("model %s swapped in for %s", model.model_version, [c.name for c in group.cameras])
        return {"reloaded": swapped}

    def reload_config(self) -> dict[str, Any]:
        """Re-read the config file: thresholds, bundles and heatmap/evidence policies apply now;
        cameras' sources and modes restart that camera; anything else needs a restart (refused)."""
        if self.config_path is None:
            raise ControlError("this daemon was not started from a config file: nothing to reload")
        try:
            new = load_edge_config(self.config_path, self.overrides)
        except EngineError as err:
            raise ControlError(f"reload refused, the running config stays: {err}") from None
        old = self.cfg
        if [c.name for c in new.cameras] != [c.name for c in old.cameras]:
            raise ControlError("cameras were added, removed or renamed: restart the service to apply that")
        for section in ("publish", "control", "security", "metrics", "pipeline", "line"):
            if section != "publish" and getattr(new, section) != getattr(old, section):
                raise ControlError(f"{section} changed: restart the service to apply that")
        if (new.publish.address, new.publish.sndhwm) != (old.publish.address, old.publish.sndhwm):
            raise ControlError("publish.address or publish.sndhwm changed: restart the service to apply that")
        changes: list[str] = []
        for old_cam, cam in zip(old.cameras, new.cameras, strict=True):
            if (cam.source, cam.mode) != (old_cam.source, old_cam.mode):
                raise ControlError(
                    f"camera {cam.name}: source or mode changed: restart the service to apply that"
                )
            if model_key(cam) != model_key(old_cam):
                group_cams = self.pipeline.groups[self.pipeline.group_of[cam.name]].cameras
                if len(group_cams) > 1:
                    raise ControlError(
                        f"camera {cam.name} shares its model: restart the service to change it"
                    )
                self.reload_model(cam.name, cam.bundle)
                changes.append(f"{cam.name}: bundle {cam.bundle}")
            if cam.threshold != old_cam.threshold:
                state = self.pipeline.cameras[cam.name]
                with state.lock:
                    state.threshold_override = cam.threshold
                    state.threshold_source = "config" if cam.threshold is not None else "bundle"
                model = self.pipeline.group(cam.name).model
                self.metrics.set_threshold(cam.name, state.threshold_for(model)[0])
                changes.append(f"{cam.name}: threshold {cam.threshold}")
            self.pipeline.cameras[cam.name].cfg = cam
        self.cfg = new
        log.warning("config %s reloaded: %s", self.config_path, "; ".join(changes) or "no model changes")
        return {"reloaded": "config", "changes": changes}

    # ------------------------------------------------------------------------------ retraining

    def collect(self, camera: str, part: str, count: int) -> dict[str, Any]:
        return self.parts_service.collect(camera, part, count)

    def import_images(self, part: str, dir: str | None, evidence: str | None, kind: str) -> dict[str, Any]:
        return self.parts_service.import_images(part, dir, evidence, kind)

    def review(self, part: str, image: str, verdict: str, retrain: bool) -> dict[str, Any]:
        return self.parts_service.review(part, image, verdict, retrain)

    def train(self, part: str, config: str | None) -> dict[str, Any]:
        return self.parts_service.train(part, config)

    def cancel(self, job: str) -> dict[str, Any]:
        return self.parts_service.cancel(job)

    def promote(self, part: str, version: str) -> dict[str, Any]:
        return self.parts_service.promote(part, version)

    def rollback(self, part: str) -> dict[str, Any]:
        return self.parts_service.rollback(part)

    def parts(self, part: str | None) -> dict[str, Any]:
        return self.parts_service.parts(part)

    # ------------------------------------------------------------------------------ shutdown

    def shutdown(self, deadline_s: float) -> int:
        """Stop taking parts, score and publish the ones in flight, close everything.

        Returns:
            The number of parts that could not be scored before the deadline (published UNKNOWN).
        """
        self.state = "stopping"
        deadline = time.monotonic() + deadline_s
        self.parts_service.cancel_all()
        self.pipeline.stop_capture(min(2.0, deadline_s / 4))
        left = self.pipeline.drain(deadline - 0.5)
        threads = [c.thread for c in self.pipeline.captures.values()]
        threads += [t for g in self.pipeline.groups.values() for t in (g.thread, g.post_thread)]
        self.stuck_threads = [t.name for t in threads if t.is_alive()]
        if self.publisher is not None:
            self.heartbeat()
            self.publisher.flush(max(0.2, deadline - time.monotonic()))
        for part in (self.control, self.metrics_server, self.publisher):
            if part is not None:
                try:
                    part.close()
                except Exception:  # closing must go on for the other parts
                    log.exception("closing %s failed", type(part).__name__)
        if self.evidence is not None:
            self.evidence.close(max(0.5, deadline - time.monotonic()))
        if self.auth is not None:
            self.auth.stop()
        self.parts_service.close(max(0.1, deadline - time.monotonic()))
        self.pipeline.close_models()
        self.context.term()
        return left
