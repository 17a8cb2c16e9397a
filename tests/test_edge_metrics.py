"""edge.metrics: the private registry's series, and the HTTP server over real loopback connections.

(Named test_edge_metrics.py: tests/test_metrics.py covers trainer.evaluate.metrics.)
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from edge.errors import EdgeError
from edge.metrics import STAGES, Metrics, MetricsServer


def _get(url: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, HTTP errors included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _v(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def server() -> Iterator[tuple[MetricsServer, Metrics, dict[str, tuple[bool, str]]]]:
    metrics = Metrics()
    state = {"health": (True, "ok"), "ready": (False, "warming up camera cam1")}
    srv = MetricsServer(metrics, "127.0.0.1", 0, health=lambda: state["health"], ready=lambda: state["ready"])
    srv.start()
    yield srv, metrics, state
    srv.close()


def test_metrics_endpoint_shows_the_values_set(server) -> None:
    srv, m, _ = server
    assert srv.port > 0
    m.add_camera("cam1")
    m.count_frame("cam1", 5)
    m.drop_frame("cam1", "free_run_replaced", 2)
    m.observe_result("cam1", "PASS", latencies={"infer": 0.004, "total": 0.020})
    m.observe_result("cam1", "UNKNOWN", "stale", {"total": 3.0})
    m.reconnect("cam1")
    m.set_camera_up("cam1", True)
    m.set_queue_depth("cam1", 3)
    m.set_model("cam1", "bottle", "1.2", "abc123")
    m.set_threshold("cam1", 3.5)
    m.count_publish_dropped()
    m.count_evidence_dropped(4)
    m.set_evidence_bytes(12345)
    m.set_degraded(["evidence_low_disk"])

    status, ctype, body = _get(f"{srv.url}/metrics")
    assert status == 200
    assert ctype.startswith("text/plain") and "version=" in ctype
    s = _samples(body)
    assert _v(s, "masf_edge_frames_total", camera="cam1") == 5
    assert _v(s, "masf_edge_dropped_frames_total", camera="cam1", reason="free_run_replaced") == 2
    assert _v(s, "masf_edge_dropped_frames_total", camera="cam1", reason="overflow") == 0  # pre-created
    assert _v(s, "masf_edge_results_total", camera="cam1", verdict="PASS") == 1
    assert _v(s, "masf_edge_results_total", camera="cam1", verdict="FAIL") == 0
    assert _v(s, "masf_edge_unknown_total", camera="cam1", reason="stale") == 1
    assert _v(s, "masf_edge_stage_latency_seconds_count", camera="cam1", stage="total") == 2
    assert _v(s, "masf_edge_stage_latency_seconds_bucket", camera="cam1", stage="infer", le="0.005") == 1
    assert _v(s, "masf_edge_stage_latency_seconds_bucket", camera="cam1", stage="infer", le="0.001") == 0
    assert _v(s, "masf_edge_stage_latency_seconds_bucket", camera="cam1", stage="total", le="10.0") == 2
    assert _v(s, "masf_edge_reconnects_total", camera="cam1") == 1
    assert _v(s, "masf_edge_camera_up", camera="cam1") == 1
    assert _v(s, "masf_edge_queue_depth", camera="cam1") == 3
    labels = {"camera": "cam1", "part": "bottle", "model_version": "1.2", "bundle_id": "abc123"}
    assert _v(s, "masf_edge_model_info", **labels) == 1
    assert _v(s, "masf_edge_threshold", camera="cam1") == 3.5
    assert _v(s, "masf_edge_publish_dropped_total") == 1
    assert _v(s, "masf_edge_evidence_dropped_total") == 4
    assert _v(s, "masf_edge_evidence_bytes") == 12345
    assert _v(s, "masf_edge_degraded") == 1
    assert _v(s, "masf_edge_degraded_info", reason="evidence_low_disk") == 1
    assert _v(s, "masf_edge_up") == 1
    assert (_v(s, "masf_edge_start_time_seconds") or 0) > 1.6e9


def test_model_swap_and_degraded_clear_old_series() -> None:
    m = Metrics()
    m.set_model("cam1", "bottle", "1", "aaa")
    m.set_model("cam1", "bottle", "2", "bbb")
    m.set_degraded(["evidence_low_disk", "infer_timeout"])
    m.set_degraded(["infer_timeout"])
    s = _samples(m.render())
    assert (
        _v(s, "masf_edge_model_info", camera="cam1", part="bottle", model_version="1", bundle_id="aaa")
        is None
    )
    assert (
        _v(s, "masf_edge_model_info", camera="cam1", part="bottle", model_version="2", bundle_id="bbb") == 1
    )
    assert _v(s, "masf_edge_degraded_info", reason="evidence_low_disk") is None
    assert _v(s, "masf_edge_degraded") == 1
    m.set_degraded([])
    s = _samples(m.render())
    assert _v(s, "masf_edge_degraded") == 0
    assert not [k for k in s if k[0] == "masf_edge_degraded_info"]


def test_remove_camera_drops_all_its_series() -> None:
    m = Metrics()
    for cam in ("cam1", "cam2"):
        m.add_camera(cam)
        m.observe_result(cam, "FAIL", latencies={s: 0.01 for s in STAGES})
        m.set_model(cam, "p", "1", "b")
    m.remove_camera("cam1")
    s = _samples(m.render())
    assert not [k for k in s if ("camera", "cam1") in k[1]]
    assert _v(s, "masf_edge_results_total", camera="cam2", verdict="FAIL") == 1


def test_bad_labels_are_refused() -> None:
    m = Metrics()
    with pytest.raises(ValueError, match="verdict"):
        m.observe_result("cam1", "MAYBE")
    with pytest.raises(ValueError, match="stage"):
        m.observe_result("cam1", "PASS", latencies={"inference": 0.1})
    with pytest.raises(ValueError, match="drop reason"):
        m.drop_frame("cam1", "bored")


def test_two_instances_do_not_share_state() -> None:
    a, b = Metrics(), Metrics()  # would raise "Duplicated timeseries" on a shared registry
    a.count_frame("cam1", 7)
    assert _v(_samples(a.render()), "masf_edge_frames_total", camera="cam1") == 7
    assert _v(_samples(b.render()), "masf_edge_frames_total", camera="cam1") is None
    assert REGISTRY.get_sample_value("masf_edge_frames_total", {"camera": "cam1"}) is None


def test_probes_flip_with_the_callables(server) -> None:
    srv, _, state = server
    status, ctype, body = _get(f"{srv.url}/healthz")
    assert (status, ctype, json.loads(body)) == (200, "application/json", {"ok": True, "detail": "ok"})
    status, _, body = _get(f"{srv.url}/readyz")
    assert (status, json.loads(body)) == (503, {"ok": False, "detail": "warming up camera cam1"})

    state["ready"] = (True, "2 cameras running")
    state["health"] = (False, "camera cam1 stalled for 12 s")
    status, _, body = _get(f"{srv.url}/readyz")
    assert (status, json.loads(body)) == (200, {"ok": True, "detail": "2 cameras running"})
    status, _, body = _get(f"{srv.url}/healthz?verbose=1")
    assert (status, json.loads(body)) == (503, {"ok": False, "detail": "camera cam1 stalled for 12 s"})


def test_a_raising_probe_is_a_503_and_the_server_lives_on() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("pipeline gone")

    with MetricsServer(Metrics(), "127.0.0.1", 0, health=broken) as srv:
        status, _, body = _get(f"{srv.url}/healthz")
        assert status == 503 and "pipeline gone" in json.loads(body)["detail"]
        assert _get(f"{srv.url}/readyz")[0] == 200


def test_unknown_path_is_404_and_access_lines_go_to_the_logger(
    server, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    srv, _, _ = server
    with caplog.at_level(logging.DEBUG, logger="edge.metrics"):
        assert _get(f"{srv.url}/")[0] == 404
        assert _get(f"{srv.url}/metrics/extra")[0] == 404
    assert capfd.readouterr().err == ""  # BaseHTTPRequestHandler would write access lines to stderr
    assert any("/metrics/extra" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback (::1) on this machine")
    with MetricsServer(Metrics(), "::1", 0) as srv:
        assert srv.url.startswith("http://[::1]:")
        assert _get(f"{srv.url}/healthz")[0] == 200


def test_bind_failure_is_one_line_naming_the_address() -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        with pytest.raises(EdgeError) as err:
            MetricsServer(Metrics(), "127.0.0.1", port).start()
        assert f"127.0.0.1:{port}" in str(err.value) and "\n" not in str(err.value)
    finally:
        blocker.close()


def test_close_frees_the_port() -> None:
    srv = MetricsServer(Metrics(), "127.0.0.1", 0).start()
    port = srv.port
    assert _get(f"{srv.url}/metrics")[0] == 200
    srv.close()
    srv.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    again = MetricsServer(Metrics(), "127.0.0.1", port).start()  # a restart binds the same port
    try:
        assert again.port == port
        assert _get(f"{again.url}/healthz")[0] == 200
    finally:
        again.close()
