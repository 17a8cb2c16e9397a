"""CURVE on real sockets: key files, the allow-list authenticator, and who gets messages and replies (an
allowed client does; a client with an unknown key, a plain client, and anyone when no authenticator runs
do not)."""

from __future__ import annotations

import argparse
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from test_control import Line
from test_protocol import sample_result

from edge import protocol as P
from edge.control import ControlServer
from edge.errors import EdgeError
from edge.keys import (
    Authenticator,
    CurveClient,
    CurveServer,
    add_keys_arguments,
    load_keypair,
    load_public,
    make_keypair,
    run_keys,
)
from edge.publish import Publisher
from edge.subscriber import ControlClient, Subscriber

ANY = "tcp://127.0.0.1:*"
pytestmark = pytest.mark.timeout(60)  # a wedged socket fails fast instead of hanging the run


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keys")
    make_keypair(root / "server", "server")
    make_keypair(root / "plc1", "plc1")
    make_keypair(root / "intruder", "intruder")
    (root / "clients").mkdir()
    shutil.copy(root / "plc1" / "plc1.key", root / "clients" / "plc1.key")
    return root


def test_make_and_load_keys(tmp_path: Path) -> None:
    public, secret = make_keypair(tmp_path / "k", "plc9")
    assert (public.name, secret.name) == ("plc9.key", "plc9.key_secret")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    pub, sec = load_keypair(secret)
    assert len(pub) == 40 and len(sec) == 40 and load_public(public) == pub
    assert b"secret-key" not in public.read_bytes()
    with pytest.raises(EdgeError, match="already exists: pick another --name or pass --force"):
        make_keypair(tmp_path / "k", "plc9")
    public2, _ = make_keypair(tmp_path / "k", "plc9", force=True)
    assert load_public(public2) != pub
    with pytest.raises(EdgeError, match=r"holds no secret key: pass the \.key_secret file"):
        load_keypair(public)
    with pytest.raises(
        EdgeError, match=r"CURVE key file .*nope.key not found: make one with 'masf-edge keys"
    ):
        load_public(tmp_path / "nope.key")
    (tmp_path / "junk.key").write_text("hello\n")
    with pytest.raises(EdgeError, match=r"cannot read CURVE key file .*junk\.key: No public key found"):
        load_public(tmp_path / "junk.key")
    with pytest.raises(EdgeError, match="plain file stem"):
        make_keypair(tmp_path, "a/b")


def test_keys_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_keys_arguments(parser)
    assert run_keys(parser.parse_args(["--out", str(tmp_path / "out"), "--name", "server"])) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"public key: {tmp_path / 'out' / 'server.key'}")
    assert out[1].startswith(f"secret key: {tmp_path / 'out' / 'server.key_secret'}")


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


def _client(keys: Path, name: str) -> CurveClient:
    return CurveClient(keys / "server" / "server.key", keys / name / f"{name}.key_secret")


class _Feed:
    """Publishes results continuously (seq 1, 2, ...) until stopped."""

    def __init__(self, pub: Publisher) -> None:
        self.pub = pub
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            seq += 1
            self.pub.publish(P.encode_result(sample_result(seq=seq)))
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def _servers(ctx: zmq.Context, curve: CurveServer) -> tuple[Publisher, ControlServer]:
    pub = Publisher(ctx, ANY, sndhwm=100, curve=curve).start()
    ctl = ControlServer(ctx, ANY, Line(), curve=curve).start()
    return pub, ctl


def _receives(sub: Subscriber, within: float) -> bool:
    return sub.recv(within) is not None


def test_allow_list(ctx: zmq.Context, keys: Path) -> None:
    curve = CurveServer(keys / "server" / "server.key_secret", keys / "clients")
    with Authenticator(ctx, curve) as auth:
        pub, ctl = _servers(ctx, curve)
        feed = _Feed(pub)
        ok = Subscriber(str(pub.endpoint), curve_client=_client(keys, "plc1"))
        bad = Subscriber(str(pub.endpoint), curve_client=_client(keys, "intruder"))
        plain = Subscriber(str(pub.endpoint))
        try:
            assert _receives(ok, 5.0)
            msg = ok.recv(2.0)
            assert msg is not None and msg.header["verdict"] == "FAIL"
            assert not _receives(bad, 1.0)  # the same second for all three: the feed is running
            assert not _receives(plain, 0.01)
            with ControlClient(str(ctl.endpoint), timeout_s=2.0, curve_client=_client(keys, "plc1")) as c:
                assert c.ping()["pong"] and c.status()["line"] == "line1"
            for client in (_client(keys, "intruder"), None):
                with (
                    ControlClient(str(ctl.endpoint), timeout_s=0.5, curve_client=client) as c,
                    pytest.raises(EdgeError, match=r"no reply from .* within 0\.5 s"),
                ):
                    c.ping()
            # Allow the intruder, reload: a new connection of it gets in.
            shutil.copy(keys / "intruder" / "intruder.key", keys / "clients" / "intruder.key")
            try:
                assert auth.reload() == 2
                with ControlClient(
                    str(ctl.endpoint), timeout_s=2.0, curve_client=_client(keys, "intruder")
                ) as c:
                    assert c.ping()["pong"]
            finally:
                (keys / "clients" / "intruder.key").unlink()
        finally:
            feed.close()
            for s in (ok, bad, plain):
                s.close()
            pub.close()
            ctl.close()


def test_allow_any_client_with_a_key(ctx: zmq.Context, keys: Path) -> None:
    curve = CurveServer(keys / "server" / "server.key_secret", None)
    with Authenticator(ctx, curve):
        pub, ctl = _servers(ctx, curve)
        feed = _Feed(pub)
        subs = [Subscriber(str(pub.endpoint), curve_client=_client(keys, n)) for n in ("plc1", "intruder")]
        plain = Subscriber(str(pub.endpoint))
        try:
            assert all(_receives(s, 5.0) for s in subs)
            assert not _receives(plain, 0.5)
            with ControlClient(str(ctl.endpoint), timeout_s=2.0, curve_client=_client(keys, "intruder")) as c:
                assert c.ping()["ok"]
        finally:
            feed.close()
            for s in (*subs, plain):
                s.close()
            pub.close()
            ctl.close()


def test_no_authenticator_fails_closed(ctx: zmq.Context, keys: Path) -> None:
    curve = CurveServer(keys / "server" / "server.key_secret", keys / "clients")
    pub, ctl = _servers(ctx, curve)
    feed = _Feed(pub)
    sub = Subscriber(str(pub.endpoint), curve_client=_client(keys, "plc1"))
    try:
        assert not _receives(sub, 1.0)
        with (
            ControlClient(str(ctl.endpoint), timeout_s=0.3, curve_client=_client(keys, "plc1")) as c,
            pytest.raises(EdgeError, match="no reply"),
        ):
            c.ping()
    finally:
        feed.close()
        sub.close()
        pub.close()
        ctl.close()


def test_authenticator_and_key_errors(ctx: zmq.Context, keys: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgeError, match=r"client key folder .*missing not found"):
        Authenticator(ctx, CurveServer(keys / "server" / "server.key_secret", tmp_path / "missing")).start()
    with (
        Authenticator(ctx, CurveServer(keys / "server" / "server.key_secret")),
        pytest.raises(EdgeError, match="one Authenticator per ZeroMQ context"),
    ):
        Authenticator(ctx, CurveServer(keys / "server" / "server.key_secret")).start()
    bad = CurveServer(tmp_path / "none.key_secret")
    with pytest.raises(EdgeError, match=r"none\.key_secret not found"):
        Publisher(ctx, ANY, sndhwm=10, curve=bad).start()
    with pytest.raises(EdgeError, match=r"none\.key_secret not found"):
        ControlServer(ctx, ANY, Line(), curve=bad).start()
    with pytest.raises(EdgeError, match="holds no secret key"):
        Subscriber(
            "tcp://127.0.0.1:1",
            curve_client=CurveClient(keys / "server" / "server.key", keys / "plc1" / "plc1.key"),
        )
