"""The tests' port allocator: disjoint slices per xdist worker, never the same port twice, bound-checked."""

from __future__ import annotations

import itertools
import socket

import net_support
import pytest
from net_support import free_port, free_udp_base, port_slice


def test_worker_slices_are_disjoint_and_below_the_ephemeral_range() -> None:
    alone = port_slice(worker="", workers="1")
    assert alone == range(20000, 32000)
    slices = [port_slice(worker=f"gw{i}", workers="3") for i in range(3)]
    assert [len(s) for s in slices] == [4000] * 3
    assert all(a.stop <= b.start for a, b in itertools.pairwise(slices))
    assert slices[0].start == 20000 and slices[-1].stop <= 32768


def test_ports_are_distinct_free_and_in_this_process_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setattr(net_support, "_cursor", [])
    mine = port_slice()
    taken = [free_port() for _ in range(20)]
    assert len(set(taken)) == 20 and all(p in mine for p in taken)
    base = free_udp_base(4)
    assert base % 2 == 0 and base not in taken and all(p in mine for p in range(base, base + 4))


def test_two_runs_start_their_walk_at_different_places(monkeypatch: pytest.MonkeyPatch) -> None:
    starts = []
    for run in ("run-a", "run-b", "run-a"):
        monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", run)
        monkeypatch.setattr(net_support, "_cursor", [])
        starts.append(free_port())
    assert starts[0] != starts[1] and starts[0] == starts[2]


def test_a_busy_port_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    first = port_slice().start
    monkeypatch.setattr(net_support, "_cursor", [first])
    with socket.socket() as busy:
        try:
            busy.bind(("127.0.0.1", first))
        except OSError:
            pytest.skip(f"port {first} is taken by something else on this machine")
        busy.listen()
        assert free_port() != first


def test_the_cursor_wraps_around_its_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = port_slice()
    monkeypatch.setattr(net_support, "_cursor", [mine.stop - 1])
    base = free_udp_base(4)  # does not fit before the end: starts again at the slice's beginning
    assert mine.start <= base < mine.start + 100
