"""Binding the daemon's server sockets (publish, control): CURVE first, one-line errors, the real endpoint."""

from __future__ import annotations

import zmq

from edge.errors import EdgeError
from edge.keys import CurveServer

__all__ = ["bind_server_socket"]


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
