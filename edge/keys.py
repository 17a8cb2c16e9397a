"""CURVE keys and authentication for the publish and control sockets.

* :func:`make_keypair` writes a key pair (``NAME.key`` public, ``NAME.key_secret`` secret, mode 0600) with
  ``zmq.auth.create_certificates``; ``masf-edge keys --out DIR --name NAME`` is its command line.
* :class:`CurveServer` (the daemon's secret key and a folder of allowed clients' public keys) and
  :class:`CurveClient` (the server's public key and the client's secret key) set the CURVE options of a
  socket with ``apply``.
* :class:`Authenticator` owns the ZAP handler (``zmq.auth.thread.ThreadAuthenticator``) of one context:
  with a folder of public keys only those clients are let in, without one any client that has a key pair
  and the server's public key. Start it before binding the server sockets; a server socket whose context
  has no running authenticator refuses every client (``ZAP_ENFORCE_DOMAIN``), so forgetting it fails
  closed, never open.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from edge.errors import EdgeError

__all__ = [
    "ZAP_DOMAIN",
    "Authenticator",
    "CurveClient",
    "CurveServer",
    "add_keys_arguments",
    "load_keypair",
    "load_public",
    "make_keypair",
    "run_keys",
]

log = logging.getLogger(__name__)

ZAP_DOMAIN = "masf"


def _check_curve() -> None:
    if not zmq.has("curve"):
        raise EdgeError("this libzmq has no CURVE support: install pyzmq wheels (they bundle libsodium)")


def make_keypair(out_dir: str | Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write a new CURVE key pair.

    Args:
        out_dir: the folder (made if missing).
        name: the file stem (``NAME.key`` and ``NAME.key_secret``).
        force: overwrite an existing pair.

    Returns:
        ``(public_path, secret_path)``; the secret file is readable by its owner only.

    Raises:
        EdgeError: a bad name, an existing pair without ``force``, or a folder that cannot be written.
    """
    _check_curve()
    if not name or "/" in name or name.startswith("."):
        raise EdgeError(f"key name {name!r} must be a plain file stem such as 'server' or 'plc1'")
    out = Path(out_dir)
    public, secret = out / f"{name}.key", out / f"{name}.key_secret"
    if not force and (public.exists() or secret.exists()):
        raise EdgeError(f"{public} or {secret} already exists: pick another --name or pass --force")
    try:
        out.mkdir(parents=True, exist_ok=True)
        pub_s, sec_s = zmq.auth.create_certificates(str(out), name)
        os.chmod(sec_s, 0o600)
    except OSError as e:
        raise EdgeError(f"cannot write keys to {out}: {e.strerror or e}") from None
    return Path(pub_s), Path(sec_s)


def _load(path: str | Path) -> tuple[bytes, bytes | None]:
    p = Path(path)
    if not p.is_file():
        raise EdgeError(f"CURVE key file {p} not found: make one with 'masf-edge keys --out DIR --name NAME'")
    try:
        return zmq.auth.load_certificate(str(p))
    except (OSError, ValueError) as e:
        raise EdgeError(f"cannot read CURVE key file {p}: {' '.join(str(e).split())}") from None


def load_keypair(secret_file: str | Path) -> tuple[bytes, bytes]:
    """The ``(public, secret)`` Z85 keys of a ``.key_secret`` file.

    Raises:
        EdgeError: missing or unreadable file, or one without a secret key (a public ``.key`` file).
    """
    public, secret = _load(secret_file)
    if not secret:
        raise EdgeError(f"{secret_file} holds no secret key: pass the .key_secret file of the pair")
    return public, secret


def load_public(file: str | Path) -> bytes:
    """The Z85 public key of a ``.key`` (or ``.key_secret``) file.

    Raises:
        EdgeError: missing or unreadable file.
    """
    return _load(file)[0]


@dataclass(frozen=True)
class CurveServer:
    """The server side of CURVE (the daemon's publish and control sockets).

    Attributes:
        secret_key_file: the daemon's ``.key_secret`` file.
        client_public_keys_dir: a folder of allowed clients' ``.key`` files; None: any client with a key.
    """

    secret_key_file: str | Path
    client_public_keys_dir: str | Path | None = None

    def apply(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE server in the ``masf`` ZAP domain (call before bind).

        Raises:
            EdgeError: the key file is missing or unreadable.
        """
        _check_curve()
        public, secret = load_keypair(self.secret_key_file)
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, secret)
        socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


@dataclass(frozen=True)
class CurveClient:
    """The client side of CURVE (subscribers and control clients).

    Attributes:
        server_public_key_file: the daemon's public ``.key`` file.
        client_secret_key_file: this client's ``.key_secret`` file (its ``.key`` must be in the daemon's
            allow-list folder when it has one).
    """

    server_public_key_file: str | Path
    client_secret_key_file: str | Path

    def apply(self, socket: zmq.Socket) -> None:
        """Set the CURVE client options on ``socket`` (call before connect).

        Raises:
            EdgeError: a key file is missing or unreadable.
        """
        _check_curve()
        server = load_public(self.server_public_key_file)
        public, secret = load_keypair(self.client_secret_key_file)
        socket.setsockopt(zmq.CURVE_SERVERKEY, server)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, secret)


class Authenticator:
    """The ZAP handler of one context for :class:`CurveServer` sockets (one per context).

    Args:
        context: the daemon's context (the same one its server sockets are made from).
        curve: the server configuration (its allow-list folder).

    Use as a context manager, or ``start()`` / ``stop()``.
    """

    def __init__(self, context: zmq.Context, curve: CurveServer) -> None:
        self.context = context
        self.curve = curve
        self._auth: ThreadAuthenticator | None = None

    def start(self) -> Authenticator:
        """Start the ZAP thread and load the allow-list.

        Returns:
            self.

        Raises:
            EdgeError: the allow-list folder is missing, or the context already has an authenticator.
        """
        if self._auth is not None:
            return self
        _check_curve()
        self._allowed()  # a bad folder fails before the ZAP socket is bound
        auth = ThreadAuthenticator(self.context, log=logging.getLogger(f"{__name__}.zap"))
        try:
            auth.start()
        except zmq.ZMQError as e:
            auth.stop()  # closes the half-made ZAP socket, else the context could never terminate
            raise EdgeError(
                f"cannot start the CURVE authenticator ({e}): one Authenticator per ZeroMQ context"
            ) from None
        self._auth = auth
        try:
            self.reload()
        except EdgeError:
            self.stop()
            raise
        return self

    def reload(self) -> int:
        """Re-read the allow-list folder (after adding or removing a client's key).

        Returns:
            The number of allowed public keys (0 with no folder: any client).

        Raises:
            EdgeError: not started, or the folder is missing or holds an unreadable key.
        """
        if self._auth is None:
            raise EdgeError("the CURVE authenticator is not running: call start() first")
        allowed = self._allowed()
        folder = self.curve.client_public_keys_dir
        if allowed is None:
            self._auth.configure_curve(domain=ZAP_DOMAIN, location=zmq.auth.CURVE_ALLOW_ANY)
            log.info("CURVE: any client with a key pair is allowed (no client_public_keys folder)")
            return 0
        self._auth.configure_curve(domain=ZAP_DOMAIN, location=str(folder))
        if not allowed:
            log.warning("CURVE: %s holds no .key files: every client is refused", folder)
        else:
            log.info("CURVE: %d allowed client key(s) from %s", allowed, folder)
        return allowed

    def _allowed(self) -> int | None:
        """The number of keys in the allow-list folder (None: no folder, any client)."""
        folder = self.curve.client_public_keys_dir
        if folder is None:
            return None
        if not Path(folder).is_dir():
            raise EdgeError(
                f"CURVE client key folder {folder} not found: make it and put clients' .key files in it"
            )
        try:
            return len(zmq.auth.load_certificates(str(folder)))
        except (OSError, ValueError) as e:
            raise EdgeError(f"cannot read client keys in {folder}: {' '.join(str(e).split())}") from None

    def stop(self) -> None:
        """Stop the ZAP thread (idempotent); server sockets then refuse new clients."""
        auth, self._auth = self._auth, None
        if auth is not None:
            auth.stop()

    def __enter__(self) -> Authenticator:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``masf-edge keys`` to ``parser``."""
    parser.add_argument("--out", required=True, help="folder for NAME.key (public) and NAME.key_secret")
    parser.add_argument("--name", required=True, help="file stem, e.g. 'server' or 'plc1'")
    parser.add_argument("--force", action="store_true", help="overwrite an existing pair of that name")


def run_keys(args: argparse.Namespace) -> int:
    """``masf-edge keys``: write a key pair and print its two paths.

    Returns:
        0.

    Raises:
        EdgeError: see :func:`make_keypair`.
    """
    public, secret = make_keypair(args.out, args.name, force=getattr(args, "force", False))
    print(f"public key: {public}  (give it to the other side)")
    print(f"secret key: {secret}  (keep it here, mode 0600)")
    return 0
