"""The control socket on real sockets: every command through a real handler object, and every way a
client can get it wrong (bad JSON, wrong types, oversized, odd ROUTER framing, a handler that raises)
answered with one error reply while the socket keeps serving."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from test_protocol import sample_result

from edge.control import _METHODS, COMMANDS, ControlHandler, ControlServer, validate_request
from edge.errors import ControlError, EdgeError

ANY = "tcp://127.0.0.1:*"
pytestmark = pytest.mark.timeout(60)  # a wedged socket fails fast instead of hanging the run


class Line:
    """A small in-memory daemon: two cameras (one triggered), thresholds, pause state, last results."""

    def __init__(self) -> None:
        self.cameras = {"cam1": "free_run", "cam2": "triggered"}
        self.base = {"cam1": 2.0, "cam2": 3.0}
        self.override: dict[str, float] = {}
        self.paused: set[str] = set()
        self.triggers: list[str] = []
        self.reloads: list[tuple[str, str | None, str | None]] = []
        self.results: dict[str, dict[str, Any] | None] = {"cam1": sample_result(seq=5), "cam2": None}
        self.fail_status: Exception | None = None
        self.calls = 0

    def _cams(self, camera: str | None) -> list[str]:
        if camera is None:
            return sorted(self.cameras)
        if camera not in self.cameras:
            raise ControlError(f"unknown camera {camera!r}: cameras are {', '.join(sorted(self.cameras))}")
        return [camera]

    def status(self) -> dict[str, Any]:
        self.calls += 1
        if self.fail_status is not None:
            raise self.fail_status
        cams = {
            c: {"state": "paused" if c in self.paused else "running", "mode": m}
            for c, m in self.cameras.items()
        }
        return {"line": "line1", "cameras": cams}

    def last(self, camera: str | None) -> dict[str, Any]:
        return {"results": {c: self.results[c] for c in self._cams(camera)}}

    def trigger(self, camera: str) -> dict[str, Any]:
        self._cams(camera)
        if self.cameras[camera] != "triggered":
            raise ControlError(
                f"camera {camera!r} runs in free_run mode: only triggered cameras take a trigger"
            )
        self.triggers.append(camera)
        return {"camera": camera}

    def threshold(self, camera: str, value: float | None, reset: bool) -> dict[str, Any]:
        self._cams(camera)
        if reset:
            self.override.pop(camera, None)
        elif value is not None:
            self.override[camera] = value
        source = "control" if camera in self.override else "bundle"
        return {
            "camera": camera,
            "threshold": self.override.get(camera, self.base[camera]),
            "threshold_source": source,
        }

    def reload(self, what: str, camera: str | None, bundle: str | None) -> dict[str, Any]:
        self.reloads.append((what, camera, bundle))
        return {"what": what, "cameras": self._cams(camera) if what == "model" else []}

    def pause(self, camera: str | None) -> dict[str, Any]:
        cams = self._cams(camera)
        self.paused.update(cams)
        return {"cameras": cams, "state": "paused"}

    def resume(self, camera: str | None) -> dict[str, Any]:
        cams = self._cams(camera)
        self.paused.difference_update(cams)
        return {"cameras": cams, "state": "running"}


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


@pytest.fixture
def line() -> Line:
    return Line()


@pytest.fixture
def server(ctx: zmq.Context, line: Line) -> Iterator[ControlServer]:
    handler: ControlHandler = line  # the test double satisfies the Protocol (checked by mypy)
    srv = ControlServer(ctx, ANY, handler, max_request_bytes=4096).start()
    yield srv
    srv.close()


@pytest.fixture
def req(ctx: zmq.Context, server: ControlServer) -> Iterator[zmq.Socket]:
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.connect(str(server.endpoint))
    yield s
    s.close()


def ask(sock: zmq.Socket, request: Any) -> dict[str, Any]:
    sock.send(request if isinstance(request, bytes) else json.dumps(request).encode())
    reply = json.loads(sock.recv())
    assert isinstance(reply, dict) and isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert set(reply) == {"ok", "error"} and "\n" not in reply["error"]
    return reply


def test_every_command(req: zmq.Socket, line: Line) -> None:
    r = ask(req, {"cmd": "ping"})
    assert r["ok"] and r["pong"] and r["protocol_version"] == 1
    r = ask(req, {"cmd": "status"})
    cams = {
        "cam1": {"state": "running", "mode": "free_run"},
        "cam2": {"state": "running", "mode": "triggered"},
    }
    assert r == {"ok": True, "line": "line1", "cameras": cams}
    r = ask(req, {"cmd": "last"})
    assert r["ok"] and r["results"]["cam1"]["seq"] == 5 and r["results"]["cam2"] is None
    assert ask(req, {"cmd": "last", "camera": "cam1"})["results"].keys() == {"cam1"}
    assert ask(req, {"cmd": "last", "camera": None})["results"].keys() == {"cam1", "cam2"}
    assert ask(req, {"cmd": "trigger", "camera": "cam2"}) == {"ok": True, "camera": "cam2"}
    assert line.triggers == ["cam2"]
    r = ask(req, {"cmd": "trigger", "camera": "cam1"})
    assert not r["ok"] and "free_run" in r["error"]
    r = ask(req, {"cmd": "threshold", "camera": "cam1"})
    assert r == {"ok": True, "camera": "cam1", "threshold": 2.0, "threshold_source": "bundle"}
    r = ask(req, {"cmd": "threshold", "camera": "cam1", "value": 4})
    assert r["threshold"] == 4.0 and isinstance(r["threshold"], float) and r["threshold_source"] == "control"
    r = ask(req, {"cmd": "threshold", "camera": "cam1", "reset": True})
    assert r["threshold"] == 2.0 and r["threshold_source"] == "bundle"
    r = ask(req, {"cmd": "reload", "what": "model", "camera": "cam1", "bundle": "/b/v2"})
    assert r == {"ok": True, "what": "model", "cameras": ["cam1"]}
    assert ask(req, {"cmd": "reload", "what": "config"})["ok"]
    assert line.reloads == [("model", "cam1", "/b/v2"), ("config", None, None)]
    assert ask(req, {"cmd": "pause", "camera": "cam2"}) == {
        "ok": True,
        "cameras": ["cam2"],
        "state": "paused",
    }
    assert line.paused == {"cam2"}
    assert ask(req, {"cmd": "pause"})["cameras"] == ["cam1", "cam2"]
    assert ask(req, {"cmd": "resume"})["state"] == "running" and not line.paused
    r = ask(req, {"cmd": "resume", "camera": "cam9"})
    assert r == {"ok": False, "error": "unknown camera 'cam9': cameras are cam1, cam2"}


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (b"{not json", "request is not JSON"),
        (b"\xff\xfe\x00", "request is not JSON"),
        (b"", "request is not JSON"),
        (b"[1, 2, 3]", "a request is a JSON object"),
        (b'"status"', "a request is a JSON object"),
        ({"command": "status"}, 'a request needs "cmd"'),
        ({"cmd": 7}, 'a request needs "cmd"'),
        ({"cmd": "fly"}, "unknown command 'fly': use one of ping, status"),
        ({"cmd": "trigger"}, "'trigger': argument 'camera' is required"),
        ({"cmd": "trigger", "camera": 1}, "'trigger': argument 'camera' must be a str, got int"),
        ({"cmd": "trigger", "camera": None}, "must not be null"),
        ({"cmd": "status", "verbose": True}, "'status': unknown argument 'verbose' \\(allowed: none\\)"),
        ({"cmd": "threshold", "camera": "cam1", "value": "high"}, "'value' must be a number, got str"),
        ({"cmd": "threshold", "camera": "cam1", "value": True}, "'value' must be a number, got bool"),
        ({"cmd": "threshold", "camera": "cam1", "reset": "yes"}, "'reset' must be a bool"),
        ({"cmd": "threshold", "camera": "cam1", "value": 2, "reset": True}, "either 'value' or 'reset'"),
        (b'{"cmd": "threshold", "camera": "cam1", "value": NaN}', "'value' must be finite"),
        ({"cmd": "reload", "what": "firmware"}, "'what' must be one of model, config"),
        ({"cmd": "reload", "what": "config", "bundle": "/x"}, "'bundle' applies to what='model' only"),
        ({"cmd": "pause", "camera": ["cam1"]}, "'camera' must be a str, got list"),
    ],
)
def test_bad_requests_get_one_error_reply(req: zmq.Socket, line: Line, request_: Any, match: str) -> None:
    r = ask(req, request_)
    assert not r["ok"]
    assert re.search(match, r["error"]), r["error"]
    assert ask(req, {"cmd": "ping"})["ok"]  # still serving


def test_oversized_request_is_refused_unparsed(req: zmq.Socket, server: ControlServer, line: Line) -> None:
    big = json.dumps({"cmd": "status", "pad": "x" * 10_000}).encode()
    r = ask(req, big)
    assert r == {"ok": False, "error": f"request of {len(big)} bytes exceeds the limit of 4096 bytes"}
    assert line.calls == 0
    assert ask(req, {"cmd": "status"})["ok"]
    assert server.requests == 2 and server.errors == 1


def test_router_framing_and_garbage(ctx: zmq.Context, server: ControlServer) -> None:
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, 5000)
    dealer.connect(str(server.endpoint))
    try:
        # REQ-style envelope from a DEALER: the reply keeps the empty delimiter.
        dealer.send_multipart([b"", b'{"cmd": "ping"}'])
        frames = dealer.recv_multipart()
        assert frames[0] == b"" and len(frames) == 2 and json.loads(frames[1])["pong"]
        # No delimiter: the reply has none either.
        dealer.send_multipart([b'{"cmd": "ping"}'])
        frames = dealer.recv_multipart()
        assert len(frames) == 1 and json.loads(frames[0])["ok"]
        # Garbage shapes and bytes: one error reply each, on the same envelope.
        cases = [
            ([b"\x00\x01garbage"], 1, "request is not JSON"),
            ([b"a", b"b", b"c"], 1, "one JSON frame, got 3 frames"),
            ([b""], 2, "one JSON frame, got 0 frames"),  # a lone delimiter, no body
            ([b"", b"x", b"y"], 2, "one JSON frame, got 2 frames"),
            ([b"", b""], 2, "request is not JSON"),
            ([b"route", b"", b'{"cmd": "ping"}'], 3, None),
        ]
        for frames_out, n_back, match in cases:
            dealer.send_multipart(frames_out)
            back = dealer.recv_multipart()
            assert len(back) == n_back, (frames_out, back)
            if n_back > 1:
                assert back[:-1] == frames_out[: n_back - 1]
            reply = json.loads(back[-1])
            if match is None:
                assert reply["ok"]
            else:
                assert not reply["ok"] and match in reply["error"], reply
    finally:
        dealer.close()
    # A raw ROUTER-speaking peer (a STREAM socket writes bytes that are not ZMTP) cannot wedge it.
    raw = ctx.socket(zmq.STREAM)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(str(server.endpoint))
    try:
        ident = raw.getsockopt(zmq.ROUTING_ID)
        time.sleep(0.05)
        raw.send_multipart([ident, b"GET / HTTP/1.0\r\n\r\n" * 10])
        time.sleep(0.1)
    finally:
        raw.close()
    client = ctx.socket(zmq.REQ)
    client.setsockopt(zmq.LINGER, 0)
    client.setsockopt(zmq.RCVTIMEO, 5000)
    client.connect(str(server.endpoint))
    try:
        assert ask(client, {"cmd": "ping"})["ok"]
    finally:
        client.close()


def test_handler_exception_is_an_error_reply(
    req: zmq.Socket, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="edge.control")
    line.fail_status = RuntimeError("disk on fire\nsecond line")
    for _ in range(3):
        r = ask(req, {"cmd": "status"})
        assert r == {
            "ok": False,
            "error": "'status' failed: RuntimeError: disk on fire second line (see the daemon log)",
        }
    tracebacks = [rec for rec in caplog.records if rec.exc_info]
    assert len(tracebacks) == 1  # the traceback once, later failures one line each
    assert len([rec for rec in caplog.records if "failed again" in rec.getMessage()]) == 2
    line.fail_status = ControlError("status is unavailable while reloading: retry in a second")
    assert ask(req, {"cmd": "status"}) == {
        "ok": False,
        "error": "status is unavailable while reloading: retry in a second",
    }
    line.fail_status = None
    assert ask(req, {"cmd": "status"})["ok"]


def test_handler_returning_garbage(ctx: zmq.Context) -> None:
    class Odd(Line):
        def status(self) -> dict[str, Any]:
            return "fine"  # type: ignore[return-value]

        def last(self, camera: str | None) -> dict[str, Any]:
            return {"results": {"cam1": {"when": object()}}}

    srv = ControlServer(ctx, ANY, Odd()).start()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.connect(str(srv.endpoint))
    try:
        r = ask(s, {"cmd": "status"})
        assert not r["ok"] and "returned str, not a dict" in r["error"]
        r = ask(s, {"cmd": "last"})
        assert not r["ok"] and "could not be encoded" in r["error"]
        assert ask(s, {"cmd": "ping"})["ok"]
    finally:
        s.close()
        srv.close()


def test_concurrent_clients(ctx: zmq.Context, server: ControlServer) -> None:
    errors: list[str] = []

    def client(k: int) -> None:
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 5000)
        s.connect(str(server.endpoint))
        try:
            for i in range(50):
                r = ask(s, {"cmd": "threshold", "camera": "cam2"})
                if not r["ok"]:
                    errors.append(r["error"])
                if i % 10 == k % 10:
                    ask(s, b"junk")
        except Exception as e:
            errors.append(repr(e))
        finally:
            s.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors


def test_bind_error_and_close(ctx: zmq.Context, line: Line) -> None:
    srv = ControlServer(ctx, ANY, line).start()
    try:
        with pytest.raises(
            EdgeError, match=f"cannot bind the control socket to {srv.endpoint}.*control.address"
        ):
            ControlServer(ctx, str(srv.endpoint), line).start()
    finally:
        t0 = time.monotonic()
        srv.close()
        srv.close()
        assert time.monotonic() - t0 < 2.0


def test_command_table_matches_handler_protocol() -> None:
    for cmd, spec in COMMANDS.items():
        if cmd == "ping":
            continue
        method = getattr(ControlHandler, _METHODS.get(cmd, cmd))
        params = list(method.__code__.co_varnames[1 : method.__code__.co_argcount])
        assert params == list(spec), cmd
    assert validate_request({"cmd": "threshold", "camera": "c"}) == (
        "threshold",
        {"camera": "c", "value": None, "reset": False},
    )
