"""The wire format: topics, header builders and checks, encode/decode, heatmaps, sequence numbers, and the
protocol doc naming every field, reason and command."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge import protocol as P
from edge.control import COMMANDS
from edge.protocol import ProtocolError

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
STARTED = 1_700_000_000.0


def sample_result(seq: int = 1, camera: str = "cam1", line: str = "line1", **over: Any) -> dict[str, Any]:
    """A valid FAIL result header (fields overridable)."""
    kw: dict[str, Any] = dict(
        line=line,
        camera=camera,
        seq=seq,
        started=STARTED,
        acquisition_id=f"frame-{seq}",
        part="bottle",
        model_version="masf-lite0-1",
        bundle_id="b-123",
        verdict="FAIL",
        score=3.5,
        threshold=2.0,
        threshold_source="bundle",
        regions=[P.region([10, 20, 30, 40], 900, 4.25)],
        frame_shape=(480, 640, 3),
        capture=time.time() - 0.05,
        published=time.time(),
        latency_ms={"queue": 1.0, "preprocess": 2.0, "infer": 10.0, "post": 1.5, "publish": 0.5},
        heatmap=P.heatmap_info("none"),
    )
    kw.update(over)
    return P.result_header(**kw)


def sample_heartbeat(seq: int = 0, camera: str = "cam1", line: str = "line1", **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        line=line, camera=camera, seq=seq, started=STARTED, time=time.time(), state="running", fps=12.5
    )
    kw.update(over)
    return P.heartbeat_header(**kw)


def test_topics() -> None:
    assert P.topic("line1", "cam1") == b"masf/line1/cam1/"
    assert P.topic_prefix() == b"masf/"
    assert P.topic_prefix("line1") == b"masf/line1/"
    assert P.topic_prefix("line1", "cam1") == b"masf/line1/cam1/"
    with pytest.raises(ProtocolError, match="without '/'"):
        P.topic("line/1", "cam1")
    with pytest.raises(ProtocolError, match="needs the line"):
        P.topic_prefix(camera="cam1")


def test_result_round_trip_with_heatmap() -> None:
    amap = np.linspace(0.0, 6.0, 48 * 64, dtype=np.float32).reshape(48, 64)
    u8 = P.heatmap_to_u8(amap, 1.0, 5.0)
    png = P.encode_heatmap(u8)
    header = sample_result(seq=7, heatmap=P.heatmap_info("png", u8.shape, 1.0, 5.0))
    frames = P.encode_result(header, png)
    assert frames[0] == b"masf/line1/cam1/"
    assert frames[2] == png
    msg = P.decode(frames)
    assert msg.topic == "masf/line1/cam1/" and msg.kind == "result" and msg.is_result
    assert (msg.line, msg.camera, msg.seq) == ("line1", "cam1", 7)
    assert msg.header == json.loads(json.dumps(header))
    assert list(msg.header) == list(P.RESULT_KEYS)  # wire order is the documented order
    assert msg.header["latency_ms"]["total"] == pytest.approx(15.0)  # filled from the stages
    assert msg.header["frame"] == {"height": 480, "width": 640}
    back = msg.heatmap_image()
    assert back is not None and back.dtype == np.uint8 and back.shape == (48, 64)
    np.testing.assert_array_equal(back, u8)
    scores = P.u8_to_scores(back, msg.header["heatmap"]["lo"], msg.header["heatmap"]["hi"])
    inside = (amap >= 1.0) & (amap <= 5.0)
    assert np.abs(scores - amap)[inside].max() <= (5.0 - 1.0) / 255 / 2 + 1e-5


def test_heartbeat_round_trip() -> None:
    frames = P.encode_heartbeat(sample_heartbeat(seq=3, state="down", detail="camera lost:\n  timeout"))
    assert frames[2] == b""
    msg = P.decode(frames)
    assert msg.kind == "heartbeat" and not msg.is_result and msg.seq == 3
    assert msg.header["detail"] == "camera lost: timeout"  # one line
    assert list(msg.header) == list(P.HEARTBEAT_KEYS)
    assert msg.heatmap_image() is None


def test_unknown_result_rules() -> None:
    h = sample_result(verdict="UNKNOWN", reason="timeout", detail="took 12 s", score=None)
    assert P.decode(P.encode_result(h)).header["score"] is None
    with pytest.raises(ProtocolError, match="'reason' must be a reason string"):
        sample_result(verdict="UNKNOWN", score=None)
    with pytest.raises(ProtocolError, match="unknown UNKNOWN reason"):
        sample_result(verdict="UNKNOWN", reason="cosmic_rays", score=None)
    with pytest.raises(ProtocolError, match="'reason' must be null when the verdict is PASS"):
        sample_result(verdict="PASS", score=1.0, reason="timeout")
    with pytest.raises(ProtocolError, match="'score' must be a finite number when the verdict is FAIL"):
        sample_result(score=float("nan"))
    with pytest.raises(ProtocolError, match=r"verdict PASS contradicts score 3\.5 vs threshold 2\.0"):
        sample_result(verdict="PASS")
    assert sample_result(verdict="FAIL", score=2.0)["verdict"] == "FAIL"  # score == threshold is FAIL
    with pytest.raises(ProtocolError, match="'verdict' must be one of"):
        sample_result(verdict="OK")
    with pytest.raises(ProtocolError, match="'threshold_source'"):
        sample_result(threshold_source="magic")
    with pytest.raises(ProtocolError, match=r"regions\[0\].bbox"):
        sample_result(regions=[{"bbox": [0, 0, 0, 5], "area": 1, "peak": 1.0}])
    with pytest.raises(ProtocolError, match=r"heatmap\.lo/hi"):
        P.heatmap_info("png", (4, 4), 2.0, 1.0)
    with pytest.raises(ProtocolError, match="'state' must be one of"):
        sample_heartbeat(state="sleeping")
    with pytest.raises(ProtocolError, match="'seq' must be an int >= 1"):
        sample_result(seq=0)


def test_encode_checks_heatmap_frame() -> None:
    with pytest.raises(ProtocolError, match="disagree"):
        P.encode_result(sample_result(), b"\x89PNG")
    with pytest.raises(ProtocolError, match="disagree"):
        P.encode_result(sample_result(heatmap=P.heatmap_info("png", (4, 4), 0.0, 1.0)), b"")
    with pytest.raises(ProtocolError, match="needs a heartbeat header"):
        P.encode_heartbeat(sample_result())


def _frames(header: dict[str, Any], heatmap: bytes = b"") -> list[bytes]:
    return [P.topic(header["line"], header["camera"]), json.dumps(header).encode(), heatmap]


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([b"masf/line1/cam1/", b"{}"], "3 frames"),
        ([b"masf/line1/cam1/", b"{}", b"", b""], "3 frames"),
        ([b"masf/line1/cam1/", b"{not json", b""], "undecodable"),
        ([b"masf/line1/cam1/", b"\xff\xfe", b""], "undecodable"),
        ([b"masf/line1/cam1/", b"[1, 2]", b""], "must be a JSON object"),
        ([b"masf/line1/cam1/", b'{"kind": "result"}', b""], "lacks field"),
        ([b"masf/line1/cam1/", b'{"kind": "selfie"}', b""], "unknown message kind"),
    ],
)
def test_decode_rejects(frames: list[bytes], match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        P.decode(frames)
    assert "\n" not in str(info.value)


def test_decode_rejects_bad_headers() -> None:
    newer = sample_result()
    newer["protocol_version"] = P.PROTOCOL_VERSION + 1
    with pytest.raises(ProtocolError, match="protocol version 2, this reader knows up to 1"):
        P.decode(_frames(newer))
    missing = sample_result()
    del missing["threshold"]
    with pytest.raises(ProtocolError, match=r"lacks field.*threshold"):
        P.decode(_frames(missing))
    wrong_topic = _frames(sample_result())
    wrong_topic[0] = b"masf/line1/cam2/"
    with pytest.raises(ProtocolError, match="does not match"):
        P.decode(wrong_topic)
    with pytest.raises(ProtocolError, match="empty third frame"):
        P.decode(_frames(sample_heartbeat(), b"x"))
    bad_type = sample_result()
    bad_type["seq"] = "7"
    with pytest.raises(ProtocolError, match="'seq'"):
        P.decode(_frames(bad_type))


def test_decode_keeps_unknown_fields() -> None:
    h = sample_result()
    h["future_field"] = {"x": 1}
    assert P.decode(_frames(h)).header["future_field"] == {"x": 1}


def test_heatmap_to_u8_clips_and_maps() -> None:
    m = np.array([[-1.0, 0.0, 0.5], [1.0, 2.0, np.nan]], dtype=np.float32)
    u8 = P.heatmap_to_u8(m, 0.0, 1.0)
    assert u8.dtype == np.uint8
    np.testing.assert_array_equal(u8, [[0, 0, 128], [255, 255, 0]])
    with pytest.raises(ValueError, match="lo < hi"):
        P.heatmap_to_u8(m, 1.0, 1.0)
    with pytest.raises(ValueError, match="2-D uint8"):
        P.encode_heatmap(m)
    with pytest.raises(ProtocolError, match="not an 8-bit gray PNG"):
        P.decode_heatmap(b"not a png")


def test_sequence_counter_contiguous_and_ordered() -> None:
    c = P.SequenceCounter()
    with c.heartbeat() as s:
        assert s == 0
    with c.result() as s:
        assert s == 1
    with pytest.raises(RuntimeError), c.result() as s:
        assert s == 2
        raise RuntimeError("encode failed")
    with c.result() as s:
        assert s == 2  # the failed one left no hole
    assert c.last == 2

    out: list[tuple[str, int]] = []

    def results() -> None:
        for _ in range(500):
            with c.result() as seq:
                out.append(("r", seq))

    def heartbeats() -> None:
        for _ in range(500):
            with c.heartbeat() as seq:
                out.append(("h", seq))

    threads = [threading.Thread(target=results), threading.Thread(target=heartbeats)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    last = 2
    for kind, seq in out:  # in publish order: results contiguous, heartbeats never ahead
        if kind == "r":
            assert seq == last + 1
            last = seq
        else:
            assert seq == last
    assert last == 502


def test_doc_names_every_field_reason_and_command() -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert re.search(rf"protocol_version.*\b{P.PROTOCOL_VERSION}\b", doc)
    names = [*P.RESULT_KEYS, *P.HEARTBEAT_KEYS, *P.REASONS, *P.LATENCY_KEYS, *P.HEARTBEAT_STATES]
    names += [*P.THRESHOLD_SOURCES, "bbox", "area", "peak", "encoding", "shape", "dtype", "lo", "hi"]
    names += [*COMMANDS]
    for cmd, spec in COMMANDS.items():
        names += list(spec)
        assert f'"cmd": "{cmd}"' in doc, f"docs/protocol.md has no request example for {cmd!r}"
    missing = sorted({n for n in names if f"`{n}`" not in doc and f'`"{n}"`' not in doc})
    assert not missing, f"docs/protocol.md does not document: {missing}"
