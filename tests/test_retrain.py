"""On-device retraining against a running daemon (real processes and sockets): collect -> train -> validate
-> promote over the control socket, the swap seen by a subscriber at one frame, rollback, cancel, a daemon
killed during training, and bad inputs. Training uses a tiny config (the trainer runs in a worker
process; the daemon itself never imports torch)."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from edge_support import REPO, daemon_process, line_config, wait_ready, write_config

from edge.protocol import Message
from edge.subscriber import ControlClient, Subscriber

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _parts(folder: Path, n: int, size: int = 96, seed: int = 0) -> None:
    from trainer.data.synthetic import render_part

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(
            str(folder / f"{i:04d}.png"), cv2.cvtColor(render_part(rng, size, size), cv2.COLOR_RGB2BGR)
        )


def _defects(folder: Path, n: int, size: int = 96) -> None:
    from trainer.data.synthetic import add_defect, render_part

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(n):
        img, _ = add_defect(rng, render_part(rng, size, size), "spot")
        cv2.imwrite(str(folder / f"d{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def _tiny_train_config(tmp: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "train" / "masf_lite2_fast.yaml").read_text())
    cfg["data"].update({"input_size": [64, 64], "min_calib": 5, "calib_fraction": 0.3})
    # 3 epochs planned, one optimiser step allowed: the trainer runs 1 epoch, and the job's progress
    # (epochs metric) must follow the trainer's plan, not the config's epochs
    cfg["train"].update({"epochs": 3, "max_steps": 1})
    cfg["fusion"] = {"select": "none"}
    cfg["bank"]["max_size"] = 256  # the per-part bank designs stay: their synthetic defects give the estimate
    path = tmp / "tiny_train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _line(tmp: Path, fps: float = 8.0) -> dict[str, Any]:
    pytest.importorskip("torch")
    _parts(tmp / "replay", 24)
    source = {"kind": "folder", "path": str(tmp / "replay"), "loop": True, "fps": fps}
    cam = {"name": "cam1", "bundle": "store:widget", "mode": "triggered", "source": source}
    store = {
        "dir": str(tmp / "store"),
        "train_config": str(_tiny_train_config(tmp)),
        "min_images": 12,
        "shadow_frames": 4,
        "shadow_timeout_s": 30.0,
        "threads": 1,
        "max_calib_frr": 1.0,
    }
    return line_config(tmp, [cam], store=store, pipeline={"warmup": True})


def _wait_job(ctl: ControlClient, job: str, timeout: float = 400.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = ctl.request("status")["jobs"][job]
        if state["finished"] is not None:
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job} did not finish")


def _drain(sub: Subscriber, into: list[Message]) -> None:
    while (msg := sub.recv(timeout=0.05)) is not None:
        if msg.is_result:
            into.append(msg)


def test_collect_train_validate_promote_rollback(tmp_path: Path) -> None:
    doc = _line(tmp_path)
    cfg = write_config(tmp_path, doc)
    sub = Subscriber(doc["publish"]["address"])
    seen: list[Message] = []
    with daemon_process(cfg):
        wait_ready(doc["control"]["address"])
        ctl = ControlClient(doc["control"]["address"], timeout_s=30)
        try:
            # no version yet: every part is UNKNOWN (no_model), never PASS
            status = ctl.request("status")
            assert status["cameras"]["cam1"]["model"] is None
            early = ctl.request("train", part="widget")
            assert early["ok"] is False and "0 good image(s), at least 12 are needed" in early["error"]
            reply = ctl.request("collect", camera="cam1", part="widget", count=14)
            assert reply["ok"] and reply["collect"]["count"] == 14
            deadline = time.monotonic() + 60
            while ctl.request("status")["collect"]["active"]:
                assert time.monotonic() < deadline, "collection did not finish"
                _drain(sub, seen)
                time.sleep(0.2)
            images = sorted((tmp_path / "store" / "parts" / "widget" / "images" / "good").glob("*.png"))
            assert len(images) == 14
            job = ctl.request("train", part="widget")["job"]
            again = ctl.request("train", part="widget")
            assert again["ok"] is False and "already being trained" in again["error"]
            state = ctl.request("status")["jobs"][job]
            assert state["state"] in ("preparing", "training", "exporting", "validating", "shadow", "done")
            state = _wait_job(ctl, job)
            assert state["state"] == "done", state
            assert state["version"] == "v0001" and state["validation"]["calib_frr"] is not None
            assert "shadow" not in state["validation"]  # no live model to compare with yet
            # the good images the threshold rests on, as the part's own collected images, highest first
            review = state["validation"]["review"]
            assert review and [r["score"] for r in review] == sorted(
                (r["score"] for r in review), reverse=True
            )
            part_dir = tmp_path / "store" / "parts" / "widget"
            assert all((part_dir / r["image"]).is_file() for r in review)
            # and the trainer's estimate of how many synthetic defects the new threshold lets through
            escapes = state["validation"]["synthetic_escapes"]
            assert 0.0 <= escapes["escapes"] <= 1.0 and escapes["n"] > 0 and "scores" not in escapes
            _drain(sub, seen)
            promoted = ctl.request("promote", part="widget", version="v0001")
            assert promoted["ok"] and promoted["cameras"] == ["cam1"]
            time.sleep(1.5)
            _drain(sub, seen)
            # confirmed defects for the validation (a USB stick with a defects/ folder), through the CLI
            _defects(tmp_path / "usb" / "defects", 4)
            cli = subprocess.run(
                [sys.executable, "-m", "edge", "part", "import", "--part", "widget",
                 "--dir", str(tmp_path / "usb"), "--config", str(cfg)],
                capture_output=True, text=True, cwd=REPO, timeout=60,
            )  # fmt: skip
            assert cli.returncode == 0 and json.loads(cli.stdout)["imported"] == {"good": 0, "defects": 4}
            # the operator checks the good images the threshold rests on: the lowest is kept, the highest
            # sent back as a defect with a retraining (through the CLI): a second version, validated with
            # the five defects and a shadow run beside the live one, then promoted
            kept = ctl.request("review", part="widget", image=review[-1]["image"], verdict="good")
            assert kept["ok"] and kept["verdict"] == "good" and "moved_to" not in kept
            cli = subprocess.run(
                [sys.executable, "-m", "edge", "part", "review", "--part", "widget",
                 "--image", review[0]["image"], "--verdict", "defect", "--retrain", "--config", str(cfg)],
                capture_output=True, text=True, cwd=REPO, timeout=60,
            )  # fmt: skip
            assert cli.returncode == 0, cli.stderr
            sent_back = json.loads(cli.stdout)
            assert not (part_dir / review[0]["image"]).exists()
            assert sent_back["moved_to"].startswith("images/defects/")
            assert (part_dir / sent_back["moved_to"]).is_file()
            job2 = sent_back["job"]
            busy = ctl.request("review", part="widget", image=review[-1]["image"], verdict="defect")
            assert busy["ok"] is False and f"being trained (job {job2})" in busy["error"]
            state2 = _wait_job(ctl, job2)
            assert state2["state"] == "done" and state2["version"] == "v0002"
            assert state2["validation"]["defects"] == 5 and 0 <= state2["validation"]["escape_rate"] <= 1
            assert review[0]["image"] not in [r["image"] for r in state2["validation"]["review"]]
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{doc['metrics']['port']}/metrics").read()
            assert b'masf_edge_train_epochs{part="widget"} 1.0' in metrics
            shadow = state2["validation"]["shadow"]
            assert shadow["camera"] == "cam1" and shadow["frames"] == 4 and 0 <= shadow["agreement"] <= 1
            _drain(sub, seen)
            ctl.request("promote", part="widget", version="v0002")
            time.sleep(1.5)
            _drain(sub, seen)
            back = ctl.request("rollback", part="widget")
            assert back["ok"] and back["version"] == "v0001"
            time.sleep(1.5)
            _drain(sub, seen)
            status_cli = subprocess.run(
                [sys.executable, "-m", "edge", "part", "status", "--part", "widget", "--config", str(cfg)],
                capture_output=True, text=True, cwd=REPO, timeout=60,
            )  # fmt: skip
            assert status_cli.returncode == 0
            assert json.loads(status_cli.stdout)["parts"]["widget"]["current"] == "v0001"
            bad_cli = subprocess.run(
                [sys.executable, "-m", "edge", "part", "promote", "--part", "widget", "--version", "v0009",
                 "--config", str(cfg)],
                capture_output=True, text=True, cwd=REPO, timeout=60,
            )  # fmt: skip
            assert bad_cli.returncode == 2 and bad_cli.stderr.startswith("error: promote refused")
            parts = ctl.request("parts", part="widget")["parts"]["widget"]
            assert parts["current"] == "v0001" and parts["versions"] == ["v0001", "v0002"]
            events = [e["event"] for e in parts["history"]]
            for event in ("collected", "reviewed", "training", "added", "validated", "promoted"):
                assert event in events
            assert "rolled_back" in events
        finally:
            ctl.close()
            sub.close()
    seqs = [m.seq for m in seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no result lost across the swaps"
    versions = [m.header["model_version"] for m in seen]
    # one change per swap, at one frame: None (no model) -> v0001 -> v0002 -> v0001
    changes = [versions[0]] + [v for a, v in itertools.pairwise(versions) if v != a]
    assert changes == [None, "v0001", "v0002", "v0001"]
    assert all(m.header["verdict"] == "UNKNOWN" for m in seen if m.header["model_version"] is None)
    manifest = json.loads((tmp_path / "store" / "parts" / "widget" / "v0002" / "manifest.json").read_text())
    assert manifest["model"]["version"] == "v0002" and manifest["validation"]["shadow"]["frames"] == 4


def test_cancel_auto_promote_and_a_daemon_killed_during_training(tmp_path: Path) -> None:
    """On a line that loads only signed bundles: versions trained here are signed with store.signing_key."""
    from engines.signing import make_signing_key

    private, public = make_signing_key(tmp_path / "keys", "line")
    doc = _line(tmp_path)
    doc["store"].update({"min_images": 5, "auto_promote": True, "shadow_frames": 0})
    doc["security"] = {"require_signed_bundles": True, "trusted_keys": [str(public)]}
    unsigned = write_config(tmp_path, doc, "unsigned.yaml")
    doc["store"]["signing_key"] = str(private)
    from trainer.data.synthetic import render_part

    good = tmp_path / "store" / "parts" / "widget" / "images" / "good"
    good.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(12):
        cv2.imwrite(str(good / f"g{i:03d}.png"), render_part(rng, 96, 96))
    with daemon_process(unsigned):
        wait_ready(doc["control"]["address"])
        ctl = ControlClient(doc["control"]["address"], timeout_s=10)
        refused = ctl.request("train", part="widget")
        ctl.close()
    assert refused["ok"] is False and "set store.signing_key" in refused["error"]
    cfg = write_config(tmp_path, doc)
    with daemon_process(cfg) as proc:
        wait_ready(doc["control"]["address"])
        ctl = ControlClient(doc["control"]["address"], timeout_s=10)
        job = ctl.request("train", part="widget")["job"]
        time.sleep(2.0)
        assert ctl.request("cancel", job=job)["ok"]
        state = _wait_job(ctl, job, timeout=60)
        assert state["state"] == "cancelled"
        # a job whose validation passes goes live by itself (store.auto_promote)
        state = _wait_job(ctl, ctl.request("train", part="widget")["job"])
        assert state["state"] == "done" and state["passed"] is True and state["version"] == "v0001"
        deadline = time.monotonic() + 30
        while (ctl.request("status")["cameras"]["cam1"]["model"] or {}).get("model_version") != "v0001":
            assert time.monotonic() < deadline, "the passed version was not promoted"
            time.sleep(0.3)
        # a broken training config: the worker fails, the job says why, the live model keeps serving
        broken = tmp_path / "broken.yaml"
        broken.write_text("train: {epochs: -3}\n")
        state = _wait_job(ctl, ctl.request("train", part="widget", config=str(broken))["job"], timeout=120)
        assert state["state"] == "failed" and "train.epochs" in state["error"]
        assert ctl.request("status")["cameras"]["cam1"]["model"]["model_version"] == "v0001"
        job = ctl.request("train", part="widget")["job"]
        deadline = time.monotonic() + 60
        while ctl.request("status")["jobs"][job]["state"] not in ("training", "exporting"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        ctl.close()
        proc.send_signal(signal.SIGKILL)  # power cut during training
        proc.wait(10)
    part = tmp_path / "store" / "parts" / "widget"
    assert [p.name for p in part.glob(".incoming-*")], "the half-made version is there after the kill"
    with daemon_process(cfg):
        status = wait_ready(doc["control"]["address"])
    assert status["interrupted_jobs"] and status["interrupted_jobs"][0]["part"] == "widget"
    assert not list(part.glob(".incoming-*"))
    assert sorted(p.name for p in part.iterdir() if p.name.startswith("v0")) == [
        "v0001"
    ]  # only the whole one
    assert status["cameras"]["cam1"]["model"]["model_version"] == "v0001"  # signed: the line loads it
    assert (part / "v0001" / "manifest.sig").is_file()
    events = [json.loads(line)["event"] for line in (part / "history.jsonl").read_text().splitlines()]
    assert "cancelled" in events and events[-1] == "interrupted"


def test_bad_inputs_are_clear_errors_and_the_live_model_keeps_serving(tmp_path: Path) -> None:
    doc = _line(tmp_path)
    cfg = write_config(tmp_path, doc)
    mixed = tmp_path / "usb"
    (mixed / "train" / "good").mkdir(parents=True)
    _parts(mixed / "train" / "good", 3, size=96)
    _parts(tmp_path / "other", 2, size=64)
    for p in (tmp_path / "other").iterdir():
        p.rename(mixed / "train" / "good" / f"small_{p.name}")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"\x89PNG garbage")
    with daemon_process(cfg):
        wait_ready(doc["control"]["address"])
        ctl = ControlClient(doc["control"]["address"], timeout_s=20)
        try:
            r = ctl.request("collect", camera="cam1", part="../etc", count=5)
            assert r["ok"] is False and "invalid part name" in r["error"]
            r = ctl.request("import", part="widget", dir=str(broken))
            assert r["ok"] is False and "x.png is not a readable image" in r["error"]
            r = ctl.request("import", part="widget", dir=str(mixed))
            assert r["ok"] and r["imported"] == {"good": 5, "defects": 0}
            r = ctl.request("train", part="widget")
            assert r["ok"] is False and "5 good image(s), at least 12 are needed" in r["error"]
            for i in range(8):
                _parts(tmp_path / f"more{i}", 1, seed=100 + i)
                ctl.request("import", part="widget", dir=str(tmp_path / f"more{i}"))
            job = ctl.request("train", part="widget")["job"]
            state = _wait_job(ctl, job, timeout=60)
            assert state["state"] == "failed" and "images of different sizes" in state["error"]
            r = ctl.request("promote", part="widget", version="v0001")
            assert r["ok"] is False and "no version 'v0001'" in r["error"]
            r = ctl.request("rollback", part="widget")
            assert r["ok"] is False and "no earlier version" in r["error"]
            r = ctl.request("import", part="widget", evidence="../../etc/passwd")
            assert r["ok"] is False
            assert ctl.request("status")["state"] == "running"
        finally:
            ctl.close()
    assert not list((tmp_path / "store" / "parts" / "widget").glob("v0*"))


def test_calibration_review_maps_the_runs_images_to_the_parts_own(tmp_path: Path) -> None:
    from edge.retrain import calibration_review

    run_json = tmp_path / "run.json"
    run_json.write_text(
        json.dumps(
            {
                "calibration_review": [
                    {"index": 3, "image": "train/good/cam1_0007.png", "score": 4.5},
                    {"index": 1, "image": "train/good/cam1_0002.png", "score": 2.25},
                ]
            }
        )
    )
    assert calibration_review(run_json) == [
        {"image": "images/good/cam1_0007.png", "score": 4.5},
        {"image": "images/good/cam1_0002.png", "score": 2.25},
    ]
    run_json.write_text("{not json")
    assert calibration_review(run_json) == []
    assert calibration_review(tmp_path / "missing.json") == []
    run_json.write_text(json.dumps({"calibration_review": None}))  # a run from before the review
    assert calibration_review(run_json) == []


def test_synthetic_escapes_keep_the_estimate_without_the_per_defect_lists(tmp_path: Path) -> None:
    from edge.retrain import synthetic_escapes

    run_json = tmp_path / "run.json"
    est = {
        "rule": "...",
        "threshold": 3.0,
        "n": 2,
        "escapes": 0.5,
        "by_kind": {"scratch": 0.5},
        "by_contrast": {"faint": 1.0, "medium": None, "strong": 0.0},
        "scores": [1.0, 4.0],
        "kinds": ["scratch", "scratch"],
        "contrasts": [1.0, 9.0],
    }
    run_json.write_text(json.dumps({"synthetic_escapes": est}))
    assert synthetic_escapes(run_json) == {
        k: est[k] for k in ("escapes", "n", "threshold", "by_kind", "by_contrast")
    }
    run_json.write_text(json.dumps({"synthetic_escapes": None}))  # a run without synthetic defects
    assert synthetic_escapes(run_json) is None
    run_json.write_text("{not json")
    assert synthetic_escapes(run_json) is None
    assert synthetic_escapes(tmp_path / "missing.json") is None
