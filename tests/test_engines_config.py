"""Tests for engines.config: the typed config machinery shared by the trainer and the edge."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engines.config import ConfigError, build, field_spec, load_yaml, oneof, parse_override


@dataclass(frozen=True, kw_only=True)
class Item:
    name: str = field_spec(check=lambda x: bool(x), rule="a non-empty name")
    size: int = field_spec(1, lambda x: x > 0, "a positive int")


@dataclass(frozen=True)
class Root:
    mode: str = field_spec("a", *oneof("a", "b"))
    items: list[Item] = field(default_factory=list)
    tags: dict[str, float] = field(default_factory=dict)
    ratio: float = field_spec(0.5)


def test_nested_lists_of_sections_and_dicts() -> None:
    cfg = build(Root, {"items": [{"name": "x"}, {"name": "y", "size": 3}], "tags": {"a": 1}})
    assert cfg.items == [Item(name="x"), Item(name="y", size=3)]
    assert cfg.tags == {"a": 1.0} and isinstance(cfg.tags["a"], float)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"items": [{"size": 2}]}, "f.yaml: items[0].name is required"),
        ({"items": [{"name": "x", "size": 0}]}, "f.yaml: items[0].size must be a positive int, got 0"),
        ({"items": [{"name": "x", "colour": 1}]}, "f.yaml: unknown field items[0].colour"),
        ({"items": {"name": "x"}}, "f.yaml: items must be a list"),
        ({"mode": "c"}, "f.yaml: mode must be one of 'a', 'b', got 'c'"),
        ({"ratio": float("nan")}, "f.yaml: ratio must be a finite number, got nan"),
        ({"tags": {"a": "x"}}, "f.yaml: tags.a must be a number, got 'x'"),
    ],
)
def test_errors_name_the_file_and_the_field(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(Root, doc, "f.yaml")
    assert str(info.value).startswith(message)


def test_overrides_from_strings_and_list_indices(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("items:\n  - name: x\n  - name: y\n")
    cfg = load_yaml(path, Root, ["items.1.size=4", "mode=b", "tags.t=2.5"])
    assert cfg.items[1].size == 4 and cfg.mode == "b" and cfg.tags == {"t": 2.5}
    with pytest.raises(ConfigError, match=r"cannot set items.5.size: no list item '5'"):
        load_yaml(path, Root, ["items.5.size=4"])
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        parse_override("novalue")


def test_yaml_errors_say_where(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("items: [\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line \d+\): fix the syntax"):
        load_yaml(path, Root)
    with pytest.raises(ConfigError, match=r"config file not found"):
        load_yaml(tmp_path / "none.yaml", Root)
