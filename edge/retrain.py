"""On-device retraining: training images in, a validated new version of a part's bundle out.

The daemon never imports torch: a :class:`TrainJob` runs the trainer and the exporter as **separate,
low-priority processes** (``nice``, a thread limit, their own process group so ``cancel`` stops them
whole) on the images in the model store, then validates the exported bundle in this process with ONNX
Runtime (one thread):

1. **prepare**: the part's ``images/good`` (at least ``store.min_images``, readable, all one size) laid
   out as ``train/good`` of an MVTec-layout folder in the version's ``.incoming-*`` folder;
2. **train**: ``python -m trainer fit`` (``masf-train fit``), progress (epoch, loss, ETA) read from its
   log lines;
3. **export**: ``python -m engines export`` (``masf-engine export``: parity-checked bundle);
4. **validate**: the calibration false-reject rate at the stored threshold (held-out good images), the
   escape rate on the part's confirmed defects (``images/defects``, if any), and a shadow run beside the
   live model on the camera's next frames (agreement rate and score distributions) when a camera
   inspects this part; the results go into the version's manifest (``validation``, ``model.version``),
   with the good images whose calibration scores are highest (``validation.review``: a defective part
   collected as good sets the threshold, so the operator checks these first) and the trainer's escape
   estimate (``validation.synthetic_escapes``: synthetic defects below the new threshold);
5. **add**: the complete bundle (signed with ``store.signing_key`` when set, so a line that only loads
   signed bundles can load it) is renamed into the store as a new version (and promoted when
   ``store.auto_promote`` is on and the validation passed).

Every failure is one line in the job's ``error`` and in ``status``; the live model keeps serving and the
store is never left with a half-made version.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edge.errors import EdgeError
from edge.store import ModelStore
from engines.bundle import Bundle, update_bundle
from engines.errors import EngineError
from engines.pixels import list_images, read_image_file

__all__ = ["JobState", "TrainJob", "TrainSettings", "check_images"]

log = logging.getLogger(__name__)

_EPOCH = re.compile(r"epoch (\d+): (\{.*\})")
_PLAN = re.compile(r"student: (\d+) epochs")  # the epochs the trainer will run (train.max_steps may cap them)


@dataclass(frozen=True)
class TrainSettings:
    """How jobs run (from the line config's ``store`` section)."""

    train_config: Path
    min_images: int = 20
    nice: int = 10
    threads: int = 1
    shadow_frames: int = 50
    shadow_timeout_s: float = 120.0
    signing_key: Path | None = None
    max_calib_frr: float = 0.05
    max_escape_rate: float = 0.1
    min_agreement: float = 0.9
    python: str = sys.executable


@dataclass
class JobState:
    """A job as ``status`` shows it."""

    job: str
    part: str
    state: str = (
        "queued"  # queued, preparing, training, exporting, validating, shadow, done, failed, cancelled
    )
    version: str | None = None
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    eta_s: float | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    validation: dict[str, Any] | None = None
    passed: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read(path: Path) -> np.ndarray:
    try:
        return read_image_file(path)
    except (OSError, ValueError) as err:
        raise EdgeError(f"cannot read training image {path}: {err}: remove or replace it") from None


def check_images(paths: list[Path], minimum: int, part: str) -> tuple[int, int]:
    """Check a part's training images: enough, readable, one size. Returns that size ``(h, w)``.

    Raises:
        EdgeError: too few, an unreadable file, or mixed sizes (one line naming the problem).
    """
    if len(paths) < minimum:
        raise EdgeError(
            f"part {part}: {len(paths)} good image(s), at least {minimum} are needed: collect or import more"
        )
    sizes: collections.Counter[tuple[int, int]] = collections.Counter()
    example: dict[tuple[int, int], str] = {}
    for p in paths:
        shape = _read(p).shape[:2]
        hw = (int(shape[0]), int(shape[1]))
        sizes[hw] += 1
        example.setdefault(hw, p.name)
    if len(sizes) > 1:
        (main, n), (other, m) = sizes.most_common(2)
        raise EdgeError(
            f"part {part}: images of different sizes: {main[1]}x{main[0]} ({n}) and {other[1]}x{other[0]} "
            f"({m}, e.g. {example[other]}): train one part from one camera setup"
        )
    return next(iter(sizes))


class TrainJob:
    """One retraining of one part, in its own thread (see the module docstring).

    Args:
        job: the job id.
        part: the part.
        store: the model store.
        settings: how to run.
        config: a training config file (default: ``settings.train_config``).
        shadow: ``shadow(bundle_path, frames, timeout) -> dict | None`` runs the candidate beside the live
            model on a camera of this part (None: no camera inspects it).
        on_done: called with the final :class:`JobState` (promotion, metrics).
    """

    def __init__(
        self,
        job: str,
        part: str,
        store: ModelStore,
        settings: TrainSettings,
        config: str | None = None,
        shadow: Callable[[Path, int, float], dict[str, Any] | None] | None = None,
        on_done: Callable[[JobState], None] | None = None,
    ) -> None:
        self.state = JobState(job, part)
        self.store = store
        self.settings = settings
        self.config = Path(config) if config else settings.train_config
        self.shadow = shadow
        self.on_done = on_done
        self._cancel = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"train[{part}]", daemon=True)

    def start(self) -> TrainJob:
        self.thread.start()
        return self

    def cancel(self) -> None:
        """Stop the job (its processes are killed as a group); the store keeps no trace but the history."""
        self._cancel.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

    def _set(self, **fields: Any) -> None:
        with self._lock:
            for k, v in fields.items():
                setattr(self.state, k, v)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.state.to_dict()

    # ------------------------------------------------------------------------------ steps

    def _subprocess(
        self, cmd: list[str], log_path: Path, on_line: Callable[[str], None] | None = None
    ) -> None:
        if self._cancel.is_set():
            raise _Cancelled()
        env = {**os.environ, "OMP_NUM_THREADS": str(self.settings.threads), "PYTHONUNBUFFERED": "1"}
        nice = self.settings.nice

        def lower_priority() -> None:  # in the child, before exec
            os.nice(nice)

        with open(log_path, "a", encoding="utf-8") as logf:
            proc = subprocess.Popen(
                cmd,
                stdout=logf,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                # its own process group (cancel stops the worker and its children), but not a new session:
                # with the kernel's autogroup scheduling a new session is a new group that gets a fair share
                # of the CPU whatever its nice value, and the worker would slow inspection down
                process_group=0,
                preexec_fn=lower_priority if nice > 0 else None,
            )
            with self._lock:
                self._proc = proc
            tail: collections.deque[str] = collections.deque(maxlen=20)
            assert proc.stderr is not None
            for line in proc.stderr:
                logf.write(line)
                tail.append(line.rstrip())
                if on_line is not None:
                    on_line(line)
            code = proc.wait()
            with self._lock:
                self._proc = None
        if self._cancel.is_set():
            raise _Cancelled()
        if code != 0:
            last = next((t for t in reversed(tail) if t.startswith("error:")), tail[-1] if tail else "")
            raise EdgeError(f"{Path(cmd[2]).name if len(cmd) > 2 else cmd[0]} failed (exit {code}): {last}")

    def _epochs(self) -> int:
        try:
            doc = yaml.safe_load(self.config.read_text(encoding="utf-8")) or {}
            return int((doc.get("train") or {}).get("epochs", 15))
        except (OSError, yaml.YAMLError, TypeError, ValueError):
            return 0

    def _train(self, data: Path, run: Path, logs: Path) -> None:
        epochs = self._epochs()
        self._set(state="training", epochs=epochs)
        t0 = time.monotonic()

        def progress(line: str) -> None:
            nonlocal epochs
            if plan := _PLAN.search(line):
                epochs = int(plan.group(1))
                self._set(epochs=epochs)
                return
            m = _EPOCH.search(line)
            if not m:
                return
            epoch = int(m.group(1))
            try:
                losses = json.loads(m.group(2).replace("'", '"')).get("loss_per_scale") or []
            except json.JSONDecodeError:
                losses = []
            per_epoch = (time.monotonic() - t0) / epoch
            self._set(
                epoch=epoch,
                loss=round(float(sum(losses)), 6) if losses else None,
                eta_s=round(per_epoch * max(0, epochs - epoch), 1) if epochs else None,
            )

        cmd = [
            self.settings.python,
            "-m",
            "trainer",
            "fit",
            "--config",
            str(self.config),
            "--data",
            str(data),
        ]
        cmd += ["--out", str(run), "--set", f"train.num_threads={self.settings.threads}"]
        self._subprocess(cmd, logs, progress)

    def _export(self, run: Path, out: Path, logs: Path) -> None:
        self._set(state="exporting", eta_s=None)
        cmd = [self.settings.python, "-m", "engines", "export", "--run", str(run), "--out", str(out)]
        cmd += ["--part", self.state.part, "--threads", str(self.settings.threads)]
        self._subprocess(cmd, logs)

    def _validate(self, bundle_dir: Path) -> dict[str, Any]:
        from engines.backends import get_backend
        from engines.verdict import fails

        self._set(state="validating")
        bundle = Bundle.open(bundle_dir)
        calib = bundle.calibration
        result: dict[str, Any] = {
            "calib_frr": calib.get("calib_frr"),
            "calib_images": calib.get("n_images"),
            "threshold": bundle.threshold,
        }
        defects = list_images(self.store.part_dir(self.state.part) / "images" / "defects")
        if defects:
            backend = get_backend("onnxruntime")(bundle, intra_op_threads=1)  # type: ignore[call-arg]
            try:
                scores = np.concatenate([backend.infer([_read(p)]).score for p in defects])
            finally:
                backend.close()
            result["defects"] = len(defects)
            result["escape_rate"] = float(np.mean(~fails(scores, bundle.threshold)))
        if self.shadow is not None:
            self._set(state="shadow")
            shadow = self.shadow(bundle_dir, self.settings.shadow_frames, self.settings.shadow_timeout_s)
            if shadow is not None:
                result["shadow"] = shadow
        s = self.settings
        checks = [result["calib_frr"] is not None and result["calib_frr"] <= s.max_calib_frr]
        if "escape_rate" in result:
            checks.append(result["escape_rate"] <= s.max_escape_rate)
        if "shadow" in result and result["shadow"].get("frames"):
            checks.append(result["shadow"]["agreement"] >= s.min_agreement)
        result["passed"] = all(checks)
        result["rules"] = {
            "max_calib_frr": s.max_calib_frr,
            "max_escape_rate": s.max_escape_rate,
            "min_agreement": s.min_agreement,
        }
        return result

    def _run(self) -> None:
        part, store = self.state.part, self.store
        incoming: Path | None = None
        try:
            self._set(state="preparing")
            good = list_images(store.part_dir(part) / "images" / "good")
            check_images(good, self.settings.min_images, part)
            version, incoming = store.reserve(part)
            self._set(version=version)
            store.record(part, "training", version=version, job=self.state.job, images=len(good))
            train_good = incoming / "data" / "train" / "good"
            train_good.mkdir(parents=True)
            for p in good:
                os.symlink(p.resolve(), train_good / p.name)
            logs = incoming / "job.log"
            self._train(incoming / "data", incoming / "run", logs)
            self._export(incoming / "run", incoming / "bundle", logs)
            validation = self._validate(incoming / "bundle")
            validation["review"] = calibration_review(incoming / "run" / "run.json")
            validation["synthetic_escapes"] = synthetic_escapes(incoming / "run" / "run.json")
            manifest = Bundle.open(incoming / "bundle").manifest
            update_bundle(
                incoming / "bundle",
                {},
                {"model": {**manifest["model"], "version": version}, "validation": validation},
            )
            if self.settings.signing_key is not None:
                from engines.signing import sign_bundle

                sign_bundle(incoming / "bundle", self.settings.signing_key)
            store.add(part, version, incoming / "bundle", job=self.state.job, validation=validation)
            self._set(state="done", validation=validation, passed=bool(validation["passed"]), eta_s=None)
            store.record(
                part, "validated", version=version, passed=validation["passed"], validation=validation
            )
        except _Cancelled:
            self._set(state="cancelled")
            store.record(part, "cancelled", version=self.state.version, job=self.state.job)
        except (EngineError, OSError, ValueError) as err:
            message = str(err) if isinstance(err, EngineError) else f"{type(err).__name__}: {err}"
            if isinstance(err, OSError) and err.errno == 28:
                message = f"disk full while training part {part}: free space under {store.root}"
            self._set(state="failed", error=" ".join(message.split()))
            store.record(
                part, "failed", version=self.state.version, job=self.state.job, error=self.state.error
            )
            log.error("training job %s (%s) failed: %s", self.state.job, part, self.state.error)
        except Exception as err:  # a bug must not kill the daemon: the job fails, inspection goes on
            log.exception("training job %s crashed", self.state.job)
            self._set(state="failed", error=f"{type(err).__name__}: {err}")
        finally:
            if incoming is not None and incoming.exists():
                shutil.rmtree(incoming, ignore_errors=True)
            self._set(finished=time.time())
            if self.on_done is not None:
                try:
                    self.on_done(self.state)
                except Exception:
                    log.exception("training job %s: completion handler failed", self.state.job)


class _Cancelled(Exception):
    pass


_ESCAPE_KEYS = ("escapes", "n", "threshold", "by_kind", "by_contrast")


def synthetic_escapes(run_json: Path) -> dict[str, Any] | None:
    """The run's escape estimate (``synthetic_escapes`` of ``run.json``: the share of the selection's
    synthetic defects, drawn into the calibration fit images, that score below the threshold, per kind and
    contrast third), without the per-defect lists; None when the run has none or ``run.json`` is
    unreadable. An estimate for comparing versions, optimistic for real defects."""
    try:
        est = json.loads(run_json.read_text(encoding="utf-8")).get("synthetic_escapes")
        if not isinstance(est, dict):
            return None
        out = {k: est[k] for k in _ESCAPE_KEYS if k in est}
        return out if "escapes" in out else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def calibration_review(run_json: Path) -> list[dict[str, Any]]:
    """The run's good threshold images with the highest scores (``calibration_review`` of ``run.json``),
    as the part's own images (``images/good/<name>``) with their scores, highest first; ``[]`` when the run
    has none. With the 99 threshold images of a 1 % target the threshold *is* the highest of these scores,
    so a defective part collected as good sets it: these are the images for the operator to check."""
    try:
        entries = json.loads(run_json.read_text(encoding="utf-8")).get("calibration_review") or []
        return [
            {"image": f"images/good/{Path(str(e['image'])).name}", "score": float(e["score"])}
            for e in entries
            if e.get("image")
        ]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []
