"""Binding the daemon's server sockets (publish, control): CURVE first, one-line errors, the real endpoint."""

from __future__ import annotations

import threading
from typing import Any

import zmq

from edge.errors import EdgeError
from edge.keys import CurveServer

__all__ = ["bind_server_socket", "open_in_thread", "start_socket_thread"]


def bind_server_socket(
    sock: zmq.Socket, address: str, curve: CurveServer | None, name: str, field: str
) -> str:
    """Apply ``curve`` and bind ``sock`` to ``address``; returns the bound endpoint (real port for ``:*``).

    The socket is closed when this fails.

    Args:
        name: what the socket is, for the message (``publish``, ``control``).
        field: the config field to fix (``publish.address``).

    Raises:
        EdgeError: the address is in use or invalid, or the CURVE keys cannot be read.
    """
    try:
        if curve is not None:
            curve.apply(sock)
        sock.bind(address)
    except zmq.ZMQError as e:
        sock.close(0)
        raise EdgeError(
            f"cannot bind the {name} socket to {address}: {e.strerror} "
            f"(another daemon on this port, or a bad address: fix {field})"
        ) from None
    except EdgeError:
        sock.close(0)
        raise
    last = sock.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if isinstance(last, bytes) else str(last)


def start_socket_thread(owner: Any, name: str) -> bool:
    """Start ``owner._run`` in a daemon thread that binds ``owner``'s socket, and wait until it did.

    ``owner`` has ``_thread`` (None until started), ``_ready`` (set by the thread once bound or failed) and
    ``_error`` (the thread's one-line bind error, or None). Returns False when it was running already.

    Raises:
        EdgeError: the thread could not bind its socket (the thread has ended).
    """
    if owner._thread is not None:
        return False
    owner._thread = threading.Thread(target=owner._run, name=name, daemon=True)
    owner._thread.start()
    owner._ready.wait()
    if owner._error is not None:
        owner._thread.join()
        owner._thread = None
        raise EdgeError(owner._error)
    return True


def open_in_thread(owner: Any) -> zmq.Socket | None:
    """In ``owner``'s socket thread: ``owner._open()`` the socket, record a bind error in ``owner._error``,
    and set ``owner._ready`` either way (what :func:`start_socket_thread` waits for). None: it failed."""
    try:
        sock: zmq.Socket = owner._open()
    except EdgeError as e:
        owner._error = str(e)
        return None
    finally:
        owner._ready.set()
    return sock
