"""Tests for edge.pipeline in-process: buffers and their policies, timeouts, swaps and the drain.

Real sources (folder replay) and a real ONNX Runtime model (the tiny bundle, optionally made slow with a
Loop); the outcomes are collected instead of published.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from edge_support import make_tiny_bundle, write_parts

from edge.config import config_from_dict
from edge.model import load_model
from edge.pipeline import Outcome, Pipeline

pytestmark = pytest.mark.timeout(120)


class Collector:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()

    def __call__(self, out: Outcome) -> None:
        with self.lock:
            self.outcomes.append(out)

    def wait(self, n: int, timeout: float = 30.0) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.outcomes) >= n:
                    return list(self.outcomes)
            time.sleep(0.02)
        with self.lock:
            return list(self.outcomes)


def _pipeline(tmp_path: Path, bundle: Path, parts: Path, collect: Collector, **cam: Any) -> Pipeline:
    pipe_cfg = cam.pop("pipeline", {})
    doc = {
        "cameras": [
            {"name": "cam1", "bundle": str(bundle), "source": {"kind": "folder", "path": str(parts)}, **cam}
        ],
        "pipeline": {"reconnect_min_s": 0.1, **pipe_cfg},
    }
    cfg = config_from_dict(doc, "test")
    pipe = Pipeline(cfg.pipeline, collect)
    c = cfg.cameras[0]
    pipe.add_group("g", load_model(c.bundle, warmup=False))
    pipe.add_camera(c, "g")
    return pipe


def test_triggered_replay_scores_every_part_in_order(tmp_path: Path) -> None:
    labels = write_parts(tmp_path / "parts", 12)
    bundle = make_tiny_bundle(tmp_path / "b").path
    collect = Collector()
    pipe = _pipeline(tmp_path, bundle, tmp_path / "parts", collect, mode="triggered")
    pipe.start()
    got = collect.wait(12)
    pipe.stop_capture(2.0)
    assert pipe.drain(time.monotonic() + 5) == 0
    pipe.close_models()
    assert [o.job.acquisition_id for o in got] == [f"{i:04d}.png" for i in range(12)]
    assert [o.verdict for o in got] == ["FAIL" if d else "PASS" for d in labels]
    assert all(set(o.latency) == {"queue", "preprocess", "infer", "post"} for o in got)


def test_free_run_keeps_the_newest_frame_and_counts_the_replaced(tmp_path: Path) -> None:
    write_parts(tmp_path / "parts", 5, defect_every=0)
    slow = make_tiny_bundle(tmp_path / "slow", delay_iters=300_000).path  # ~0.3 s per inference
    collect = Collector()
    src = {"kind": "folder", "path": str(tmp_path / "parts"), "loop": True, "fps": 50.0}
    pipe = _pipeline(tmp_path, slow, tmp_path / "parts", collect, mode="free_run", source=src)
    pipe.start()
    time.sleep(2.0)
    pipe.stop_capture(2.0)
    pipe.drain(time.monotonic() + 5)
    pipe.close_models()
    cam = pipe.cameras["cam1"]
    assert cam.dropped["free_run_replaced"] > 20  # frames came ~15x faster than they were scored
    assert cam.frames == len(collect.outcomes) + cam.dropped["free_run_replaced"]
    assert all(o.verdict == "PASS" for o in collect.outcomes)


def test_triggered_overflow_is_unknown_never_dropped(tmp_path: Path) -> None:
    write_parts(tmp_path / "parts", 30, defect_every=0)
    slow = make_tiny_bundle(tmp_path / "slow", delay_iters=300_000).path
    collect = Collector()
    src = {"kind": "folder", "path": str(tmp_path / "parts"), "fps": 100.0}  # a live camera: no pacing
    pipe = _pipeline(
        tmp_path, slow, tmp_path / "parts", collect, mode="triggered", source=src, pipeline={"queue_size": 2}
    )
    pipe.start()
    collect.wait(30, timeout=40)
    pipe.stop_capture(2.0)
    pipe.drain(time.monotonic() + 10)
    pipe.close_models()
    ids = sorted(o.job.acquisition_id for o in collect.outcomes)
    assert ids == [f"{i:04d}.png" for i in range(30)]  # every part has exactly one outcome
    overflow = [o for o in collect.outcomes if o.reason == "queue_overflow"]
    assert overflow and all(o.verdict == "UNKNOWN" for o in overflow)
    assert any(o.verdict == "PASS" for o in collect.outcomes)


def test_inference_timeout_resolves_the_parts_and_the_late_result_is_discarded(tmp_path: Path) -> None:
    write_parts(tmp_path / "parts", 1, defect_every=0)
    slow = make_tiny_bundle(tmp_path / "slow", delay_iters=1_500_000).path  # ~1.5 s
    collect = Collector()
    pipe = _pipeline(tmp_path, slow, tmp_path / "parts", collect, mode="triggered")
    pipe.start()
    time.sleep(0.6)
    assert pipe.check_timeouts(0.3) == ["g"]
    time.sleep(2.0)  # the inference returns meanwhile: its result must not be published a second time
    pipe.stop_capture(2.0)
    pipe.drain(time.monotonic() + 3)
    pipe.close_models()
    assert [(o.verdict, o.reason) for o in collect.outcomes] == [("UNKNOWN", "timeout")]


def test_a_swap_applies_between_batches(tmp_path: Path) -> None:
    write_parts(tmp_path / "parts", 6, defect_every=0)
    first = make_tiny_bundle(tmp_path / "a", version="a").path
    second = make_tiny_bundle(tmp_path / "b", version="b", threshold=2.0).path
    collect = Collector()
    src = {"kind": "folder", "path": str(tmp_path / "parts"), "loop": True, "fps": 30.0}
    pipe = _pipeline(tmp_path, first, tmp_path / "parts", collect, mode="triggered", source=src)
    pipe.start()
    collect.wait(5)
    pipe.groups["g"].swap(load_model(second))
    n = len(collect.wait(20))
    pipe.stop_capture(2.0)
    pipe.drain(time.monotonic() + 5)
    pipe.close_models()
    versions = [o.model.model_version for o in collect.outcomes if o.model is not None]
    k = versions.index("b")
    assert n >= 20 and set(versions[:k]) == {"a"} and set(versions[k:]) == {"b"}
    assert all(o.threshold == 2.0 for o in collect.outcomes[k:])


def test_drain_publishes_leftovers_as_shutdown(tmp_path: Path) -> None:
    write_parts(tmp_path / "parts", 10, defect_every=0)
    slow = make_tiny_bundle(tmp_path / "slow", delay_iters=1_000_000).path  # ~1 s per batch
    collect = Collector()
    src = {"kind": "folder", "path": str(tmp_path / "parts"), "fps": 100.0}
    pipe = _pipeline(
        tmp_path, slow, tmp_path / "parts", collect, mode="triggered", source=src, pipeline={"max_batch": 1}
    )
    pipe.start()
    time.sleep(0.5)
    pipe.stop_capture(2.0)
    left = pipe.drain(time.monotonic() + 0.2)
    pipe.close_models()
    assert left >= 1
    reasons = [o.reason for o in collect.outcomes]
    assert reasons.count("shutdown") == left
    assert len({o.job.acquisition_id for o in collect.outcomes}) == len(collect.outcomes)
