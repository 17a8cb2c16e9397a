"""The control socket: JSON requests over one ZeroMQ ROUTER socket, owned by its own thread.

A request is one JSON object ``{"cmd": "...", ...args}``; the reply is always exactly one JSON object,
``{"ok": true, ...}`` or ``{"ok": false, "error": "<one line>"}``, sent on the request's envelope (REQ
clients, and DEALER clients with or without the empty delimiter frame, both work). Commands and their
arguments are checked here against :data:`COMMANDS`, then passed to a :class:`ControlHandler` (the daemon);
``ping`` is answered by the server itself. Nothing a client sends can stop the server: malformed,
oversized or oddly framed requests and handler exceptions all get an error reply.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import zmq

from edge.errors import ControlError
from edge.keys import CurveServer
from edge.protocol import PROTOCOL_VERSION
from edge.sockets import bind_server_socket, open_in_thread, start_socket_thread

__all__ = ["COMMANDS", "Arg", "ControlHandler", "ControlServer", "dispatch", "validate_request"]

log = logging.getLogger(__name__)

_POLL_MS = 100


class ControlHandler(Protocol):
    """What the daemon implements for the control socket. Each method returns the reply's fields (a
    JSON-serialisable dict, ``ok`` is added) or raises :class:`~edge.errors.ControlError` with a one-line
    message for the client. Methods run on the control thread: return promptly (start long work such as a
    model reload and report it, or finish it within the clients' timeout)."""

    def status(self) -> dict[str, Any]:
        """The daemon's state: line, cameras and their state, counters."""
        ...

    def last(self, camera: str | None) -> dict[str, Any]:
        """The last result header of one camera, or of every camera (None)."""
        ...

    def trigger(self, camera: str) -> dict[str, Any]:
        """A software trigger for a triggered camera."""
        ...

    def threshold(self, camera: str, value: float | None, reset: bool) -> dict[str, Any]:
        """Set (``value``), reset to the config/bundle threshold (``reset``), or read (neither)."""
        ...

    def reload(self, what: str, camera: str | None, bundle: str | None) -> dict[str, Any]:
        """Reload the model (``what="model"``, optionally from another bundle) or the line config."""
        ...

    def pause(self, camera: str | None) -> dict[str, Any]:
        """Stop inspecting one camera (or all); heartbeats say ``paused``."""
        ...

    def resume(self, camera: str | None) -> dict[str, Any]:
        """Resume one camera (or all)."""
        ...

    def collect(self, camera: str, part: str, count: int) -> dict[str, Any]:
        """Save the camera's next ``count`` frames as good training images of ``part``."""
        ...

    def import_images(self, part: str, dir: str | None, evidence: str | None, kind: str) -> dict[str, Any]:
        """The ``import`` command: a folder of images, or one evidence item as good / defect."""
        ...

    def review(self, part: str, image: str, verdict: str, retrain: bool) -> dict[str, Any]:
        """An operator's verdict on one of a part's good images (``defect``: moved to the confirmed
        defects), then optionally a training job."""
        ...

    def train(self, part: str, config: str | None) -> dict[str, Any]:
        """Start a training job for ``part``; returns its id."""
        ...

    def cancel(self, job: str) -> dict[str, Any]:
        """Cancel a training job."""
        ...

    def promote(self, part: str, version: str) -> dict[str, Any]:
        """Make a version of ``part`` live (hot swap)."""
        ...

    def rollback(self, part: str) -> dict[str, Any]:
        """Back to the version live before."""
        ...

    def parts(self, part: str | None) -> dict[str, Any]:
        """The model store: versions, history, jobs."""
        ...


@dataclass(frozen=True)
class Arg:
    """One argument of a command.

    Attributes:
        type: ``"str"``, ``"number"`` (int or float, finite) or ``"bool"``.
        required: must be given.
        nullable: may be JSON null.
        default: the value passed to the handler when absent.
        choices: allowed values (strings).
    """

    type: str
    required: bool = False
    nullable: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()

    def check(self, cmd: str, name: str, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise ControlError(f"'{cmd}': argument '{name}' must not be null")
        ok = {
            "str": isinstance(value, str),
            "bool": isinstance(value, bool),
            "number": isinstance(value, int | float) and not isinstance(value, bool),
        }[self.type]
        if not ok:
            raise ControlError(
                f"'{cmd}': argument '{name}' must be a {self.type}, got {type(value).__name__}"
            )
        if self.type == "number":
            if not math.isfinite(value):
                raise ControlError(f"'{cmd}': argument '{name}' must be finite")
            value = float(value)
        if self.choices and value not in self.choices:
            raise ControlError(
                f"'{cmd}': argument '{name}' must be one of {', '.join(self.choices)}, got {value!r}"
            )
        return value


_CAMERA_OPT = Arg("str", nullable=True)
# The commands: name -> allowed arguments. Handler methods take exactly these as keyword arguments.
COMMANDS: dict[str, dict[str, Arg]] = {
    "ping": {},
    "status": {},
    "last": {"camera": _CAMERA_OPT},
    "trigger": {"camera": Arg("str", required=True)},
    "threshold": {
        "camera": Arg("str", required=True),
        "value": Arg("number", nullable=True),
        "reset": Arg("bool", default=False),
    },
    "reload": {
        "what": Arg("str", required=True, choices=("model", "config")),
        "camera": _CAMERA_OPT,
        "bundle": Arg("str", nullable=True),
    },
    "pause": {"camera": _CAMERA_OPT},
    "resume": {"camera": _CAMERA_OPT},
    # On-device retraining (edge/store.py, edge/collect.py, edge/retrain.py); need store.dir.
    "collect": {
        "camera": Arg("str", required=True),
        "part": Arg("str", required=True),
        "count": Arg("number", required=True),
    },
    "import": {
        "part": Arg("str", required=True),
        "dir": Arg("str", nullable=True),
        "evidence": Arg("str", nullable=True),
        "kind": Arg("str", default="good", choices=("good", "defect")),
    },
    "review": {
        "part": Arg("str", required=True),
        "image": Arg("str", required=True),
        "verdict": Arg("str", required=True, choices=("defect", "good")),
        "retrain": Arg("bool", default=False),
    },
    "train": {"part": Arg("str", required=True), "config": Arg("str", nullable=True)},
    "cancel": {"job": Arg("str", required=True)},
    "promote": {"part": Arg("str", required=True), "version": Arg("str", required=True)},
    "rollback": {"part": Arg("str", required=True)},
    "parts": {"part": Arg("str", nullable=True)},
}
# Commands whose handler method has another name (``import`` is a Python keyword).
_METHODS = {"import": "import_images"}


def validate_request(request: Any) -> tuple[str, dict[str, Any]]:
    """Check a decoded request against :data:`COMMANDS`.

    Args:
        request: the parsed JSON.

    Returns:
        ``(cmd, kwargs)`` with defaults filled in.

    Raises:
        ControlError: not an object, no or unknown ``cmd``, an unknown, missing or mistyped argument, or a
            contradictory combination (``threshold`` with both ``value`` and ``reset``; ``reload`` of the
            config with a ``bundle``).
    """
    if not isinstance(request, dict):
        raise ControlError(f'a request is a JSON object {{"cmd": ...}}, got {type(request).__name__}')
    cmd = request.get("cmd")
    if not isinstance(cmd, str):
        raise ControlError('a request needs "cmd" (a string): one of ' + ", ".join(COMMANDS))
    spec = COMMANDS.get(cmd)
    if spec is None:
        raise ControlError(f"unknown command {cmd!r}: use one of " + ", ".join(COMMANDS))
    unknown = sorted(k for k in request if k != "cmd" and k not in spec)
    if unknown:
        allowed = ", ".join(spec) or "none"
        raise ControlError(f"'{cmd}': unknown argument '{unknown[0]}' (allowed: {allowed})")
    kwargs: dict[str, Any] = {}
    for name, arg in spec.items():
        if name not in request:
            if arg.required:
                raise ControlError(f"'{cmd}': argument '{name}' is required")
            kwargs[name] = arg.default
        else:
            kwargs[name] = arg.check(cmd, name, request[name])
    if cmd == "threshold" and kwargs["value"] is not None and kwargs["reset"]:
        raise ControlError("'threshold': give either 'value' or 'reset', not both")
    if cmd == "reload" and kwargs["what"] == "config" and kwargs["bundle"] is not None:
        raise ControlError("'reload': 'bundle' applies to what='model' only")
    if cmd == "import" and (kwargs["dir"] is None) == (kwargs["evidence"] is None):
        raise ControlError(
            "'import': give either 'dir' (a folder of images) or 'evidence' (an evidence item)"
        )
    if cmd == "collect":
        if kwargs["count"] != int(kwargs["count"]) or kwargs["count"] < 1:
            raise ControlError("'collect': argument 'count' must be a positive integer")
        kwargs["count"] = int(kwargs["count"])
    return cmd, kwargs


def _one_line(text: str, limit: int = 500) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _json_default(obj: Any) -> Any:
    item = getattr(obj, "item", None)  # numpy scalars
    if callable(item):
        return item()
    tolist = getattr(obj, "tolist", None)  # numpy arrays
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def dispatch(handler: ControlHandler, cmd: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Run a validated command (``ping`` here, the rest on ``handler``).

    Returns:
        The reply's fields without ``ok``.

    Raises:
        ControlError: from the handler, or a handler that returned something else than a dict.
        Exception: whatever else the handler raised.
    """
    if cmd == "ping":
        return {"pong": True, "protocol_version": PROTOCOL_VERSION, "time": time.time()}
    result = getattr(handler, _METHODS.get(cmd, cmd))(**kwargs)
    if not isinstance(result, dict):
        raise TypeError(f"handler.{cmd} returned {type(result).__name__}, not a dict")
    return result


class ControlServer:
    """Serves the control socket from a private thread.

    Args:
        context: the daemon's ZeroMQ context.
        address: the endpoint to bind (``tcp://127.0.0.1:5557``; ``:*`` picks a free port, see
            :attr:`endpoint`).
        handler: the daemon's :class:`ControlHandler`.
        max_request_bytes: larger requests get an error reply without being parsed. Requests beyond
            16 times this (at least 16 MiB) are cut by ZeroMQ itself, which drops the connection.
        curve: CURVE server keys (the context's :class:`~edge.keys.Authenticator` must be running).
        linger_ms: how long unsent replies may delay the context's termination after close.

    Attributes:
        requests: requests answered; errors: of those, error replies.
        endpoint: the bound endpoint, after :meth:`start`.
    """

    def __init__(
        self,
        context: zmq.Context,
        address: str,
        handler: ControlHandler,
        max_request_bytes: int = 65536,
        curve: CurveServer | None = None,
        linger_ms: int = 1000,
    ) -> None:
        self.context = context
        self.address = address
        self.handler = handler
        self.max_request_bytes = int(max_request_bytes)
        self.curve = curve
        self.linger_ms = int(linger_ms)
        self.requests = 0
        self.errors = 0
        self.endpoint: str | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: str | None = None
        self._thread: threading.Thread | None = None
        self._logged: set[tuple[str, str]] = set()

    def start(self) -> ControlServer:
        """Bind the socket in the server thread; return once it is bound.

        Returns:
            self.

        Raises:
            EdgeError: the address is in use or invalid (one line naming it), or the CURVE key is bad.
        """
        if start_socket_thread(self, "masf-control"):
            log.info("control socket on %s", self.endpoint)
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and close the socket (idempotent).

        Args:
            timeout: seconds to wait for the thread (a handler call in progress finishes first).
        """
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("control thread did not stop within %.1f s (a handler call is running)", timeout)

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ socket thread

    def _open(self) -> zmq.Socket:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, self.linger_ms)
        sock.setsockopt(zmq.MAXMSGSIZE, max(16 * self.max_request_bytes, 16 * 2**20))
        self.endpoint = bind_server_socket(sock, self.address, self.curve, "control", "control.address")
        return sock

    def _run(self) -> None:
        sock = open_in_thread(self)
        if sock is None:
            return
        try:
            while not self._stop.is_set():
                try:
                    if not sock.poll(_POLL_MS, zmq.POLLIN):
                        continue
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    continue
                except zmq.ZMQError as e:
                    if e.errno in (zmq.ETERM, zmq.ENOTSOCK):
                        return
                    log.error("control socket receive failed: %s", e)
                    continue
                envelope, reply = self._answer(frames)
                try:
                    sock.send_multipart([*envelope, reply], flags=zmq.NOBLOCK)
                except zmq.ZMQError as e:  # peer gone or its pipe full: the reply is lost, not retried
                    log.warning("control reply could not be sent: %s", e)
        finally:
            sock.close()

    def _answer(self, frames: list[bytes]) -> tuple[list[bytes], bytes]:
        """The reply envelope and body for one received ROUTER message (never raises)."""
        # ROUTER: [identity, (routing frames..., empty delimiter)?, body]; REQ adds the delimiter.
        try:
            delim = frames.index(b"", 1)
        except ValueError:
            delim = -1
        if delim >= 0:
            envelope, body = frames[: delim + 1], frames[delim + 1 :]
        else:
            envelope, body = frames[:1], frames[1:]
        self.requests += 1
        try:
            if len(body) != 1:
                raise ControlError(f"a request is one JSON frame, got {len(body)} frames")
            fields = self._handle(body[0])
            reply = {"ok": True, **fields}
            reply["ok"] = True
            try:
                data = json.dumps(reply, default=_json_default, allow_nan=False).encode()
            except (TypeError, ValueError) as e:
                raise ControlError(f"the reply could not be encoded: {_one_line(str(e))}") from None
            return envelope, data
        except ControlError as e:
            self.errors += 1
            return envelope, json.dumps({"ok": False, "error": _one_line(str(e))}).encode()

    def _handle(self, body: bytes) -> dict[str, Any]:
        if len(body) > self.max_request_bytes:
            raise ControlError(
                f"request of {len(body)} bytes exceeds the limit of {self.max_request_bytes} bytes"
            )
        try:
            request = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ControlError(f"request is not JSON: {_one_line(str(e), 120)}") from None
        cmd, kwargs = validate_request(request)
        try:
            return dispatch(self.handler, cmd, kwargs)
        except ControlError:
            raise
        except Exception as e:
            key = (cmd, type(e).__name__)
            if key not in self._logged:
                self._logged.add(key)
                log.exception("control command %r failed", cmd)
            else:
                log.error("control command %r failed again: %s: %s", cmd, type(e).__name__, _one_line(str(e)))
            raise ControlError(
                f"'{cmd}' failed: {type(e).__name__}: {_one_line(str(e), 200)} (see the daemon log)"
            ) from None
