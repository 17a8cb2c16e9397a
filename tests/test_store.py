"""Tests for edge.store: versions appear whole, current is swapped atomically, history, pruning, recovery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from edge_support import make_tiny_bundle

from edge.errors import EdgeError
from edge.store import ModelStore, check_part_name
from engines.bundle import Bundle


def _add(store: ModelStore, part: str, **model: object) -> str:
    version, incoming = store.reserve(part)
    make_tiny_bundle(incoming / "bundle", part=part, version=version, **model)
    store.add(part, version, incoming / "bundle")
    incoming.rmdir()
    return version


def test_versions_promote_rollback_and_history(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store", keep=3)
    assert store.current("bracket") is None and store.previous("bracket") is None
    v1, v2 = _add(store, "bracket"), _add(store, "bracket")
    assert (v1, v2) == ("v0001", "v0002") and store.versions("bracket") == [v1, v2]
    assert store.promote("bracket", v1) == ""
    assert store.promote("bracket", v2) == v1
    link = store.current_path("bracket")
    assert link.is_symlink() and os.readlink(link) == v2
    assert Bundle.open(link).model_version == v2  # what a camera with bundle: store:bracket loads
    assert store.previous("bracket") == v1
    assert store.rollback("bracket") == v1 and store.current("bracket") == v1
    events = [e["event"] for e in store.history("bracket")]
    assert events == ["added", "added", "promoted", "promoted", "promoted", "rolled_back"]
    with pytest.raises(EdgeError, match=r"no version 'v0009'"):
        store.promote("bracket", "v0009")


def test_prune_keeps_current_and_previous(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store", keep=2)
    v1, v2, v3 = (_add(store, "p") for _ in range(3))
    store.promote("p", v1)  # 3 versions > keep: the oldest one that is neither live nor previous goes
    assert store.versions("p") == [v1, v3]
    store.promote("p", v3)
    assert store.previous("p") == v1
    v4 = _add(store, "p")
    store.promote("p", v4)
    assert store.versions("p") == [v3, v4]  # v1 was neither current nor previous any more
    assert store.current("p") == v4 and store.previous("p") == v3
    assert [e["versions"] for e in store.history("p") if e["event"] == "pruned"] == [[v2], [v1]]


def test_a_stop_during_training_leaves_nothing_half_made(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    _add(store, "p")
    version, incoming = store.reserve("p")
    (incoming / "run").mkdir()
    (incoming / "run" / "partial.bin").write_bytes(b"x" * 100)
    restarted = ModelStore(tmp_path / "store")
    assert restarted.recover() == [("p", version)]
    assert not incoming.exists() and restarted.versions("p") == ["v0001"]
    assert restarted.history("p")[-1]["event"] == "interrupted"
    assert restarted.reserve("p")[0] == "v0002"  # the number of the lost version is reused, never a gap


def test_a_broken_bundle_is_never_added_or_promoted(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    version, incoming = store.reserve("p")
    bundle = make_tiny_bundle(incoming / "bundle", part="p")
    (bundle.path / "model.onnx").write_bytes(b"truncated")
    with pytest.raises(Exception, match="checksum mismatch"):
        store.add("p", version, incoming / "bundle")
    assert store.versions("p") == []


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", "x" * 65, ".hidden", "a b", None])
def test_part_names_with_path_characters_are_refused(bad: object) -> None:
    with pytest.raises(EdgeError, match="invalid part name"):
        check_part_name(bad)


def test_an_unwritable_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgeError, match=r"not writable .*fix store.dir"):
        ModelStore(tmp_path / "file" / "store")
