"""Tests for edge.feed: the live line view of the gateways and the page, against a real daemon process."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from edge_support import daemon_process, line_config, make_tiny_bundle, wait_ready, write_config, write_parts

from edge.config import config_from_dict
from edge.feed import LineFeed
from edge.protocol import Message

pytestmark = pytest.mark.timeout(120)


def _wait(cond, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_feed_recovers_state_follows_results_and_goes_stale_when_the_daemon_dies(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "b").path
    write_parts(tmp_path / "parts", 6, defect_every=2)
    source = {"kind": "folder", "path": str(tmp_path / "parts"), "step": True, "loop": True}
    cam = {"name": "cam1", "bundle": str(bundle), "mode": "triggered", "source": source}
    doc = line_config(tmp_path, [cam])
    cfg_path = write_config(tmp_path, doc)
    cfg = config_from_dict(doc, "test")
    seen: list[Message] = []
    with daemon_process(cfg_path) as proc:
        wait_ready(doc["control"]["address"])
        early = LineFeed(cfg, stale_s=1.5).start()
        ctl = early.control()
        ctl.request("trigger", camera="cam1")  # a result published before the second feed exists
        _wait(lambda: early.camera("cam1").result is not None)
        feed = LineFeed(cfg, on_result=seen.append, stale_s=1.5).start()
        _wait(lambda: feed.camera("cam1").result is not None)  # recovered with `last`
        assert feed.camera("cam1").result["seq"] == 1 and not seen
        ctl.request("trigger", camera="cam1")
        _wait(lambda: len(seen) == 1)
        view = feed.camera("cam1")
        assert view.result["seq"] == 2 and view.result["verdict"] == "FAIL" and view.heatmap
        assert view.counts["FAIL"] == 1 and feed.healthy("cam1")
        ctl.close()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        t0 = time.monotonic()
        _wait(lambda: not feed.healthy("cam1"), timeout=10)
        assert time.monotonic() - t0 < 3.0
        feed.close()
        early.close()
