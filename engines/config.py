"""Typed, validated configuration from YAML: the machinery shared by the trainer and the edge daemon.

A configuration is a tree of frozen dataclasses. Every field has a type annotation, a default and
optionally a check with a human rule (declared with :func:`field_spec`). :func:`build` turns a plain dict
(parsed YAML) into the dataclass tree and raises one error naming the source and the dotted field
(``configs/edge/line1.yaml: cameras[0].source.fps must be positive, got -2``). Unknown fields are errors
too: a typo must never fall back silently to a default.

Supported annotations: ``bool``, ``int``, ``float`` (finite), ``str``, ``None``, unions of these,
``list[T]``, ``dict[str, T]`` and nested dataclasses (also inside lists, e.g. ``list[CameraSection]``).

:func:`load_yaml` reads a file and applies dotted ``--set`` overrides (``train.epochs=5``,
``cameras.0.threshold=3.5``) before validation. Torch-free: standard library and PyYAML only.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from engines.errors import ConfigError

__all__ = [
    "ConfigError",
    "apply_overrides",
    "build",
    "field_spec",
    "load_yaml",
    "oneof",
    "parse_override",
    "to_dict",
]

Check = Callable[[Any], bool]
_T = TypeVar("_T")


def field_spec(
    default: Any = dataclasses.MISSING, check: Check | None = None, rule: str = "", **kw: Any
) -> Any:
    """A dataclass field with a validation ``check`` and its human ``rule`` (used in error messages)."""
    return dataclasses.field(default=default, metadata={"check": check, "rule": rule}, **kw)


def oneof(*options: str) -> tuple[Check, str]:
    """``(check, rule)`` for a string that must be one of ``options``."""
    return (lambda x: x in options), "one of " + ", ".join(repr(o) for o in options)


def _non_finite(error: type[Exception], message: str) -> Exception:
    err = error(message)
    err.non_finite = True  # type: ignore[attr-defined]  # reported as is, not replaced by the field's rule
    return err


def _type_name(tp: Any) -> str:
    return {int: "an int", float: "a number", bool: "a bool (true/false)", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str, src: str, error: type[Exception]) -> Any:
    """Check ``value`` against the annotation ``tp``; returns the (possibly converted) value."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{where}.", src, error, required=True)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where, src, error)
            except Exception as err:
                if not isinstance(err, error | ConfigError):
                    raise
                errors.append(err)
        raise errors[0]
    if tp is type(None):
        if value is None:
            return None
        raise error(f"{src}: {where} must be null, got {value!r}")
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise error(f"{src}: {where} must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]", src, error) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise error(f"{src}: {where} must be a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(v, val_tp, f"{where}.{k}", src, error) for k, v in value.items()}
    ok = False
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise _non_finite(error, f"{src}: {where} must be a finite number, got {value!r}")
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    if not ok:
        raise error(f"{src}: {where} must be {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: Any, data: Any, prefix: str, src: str, error: type[Exception], required: bool = False) -> Any:
    if data is None and not required:
        data = {}
    if not isinstance(data, Mapping):
        raise error(f"{src}: {prefix.rstrip('.') or 'the config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - set(fields))
    if unknown:
        raise error(f"{src}: unknown field {prefix}{unknown[0]} (valid: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        where = f"{prefix}{name}"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data.get(name), f"{where}.", src, error)
            continue
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise error(f"{src}: {where} is required")
            continue
        check, rule = f.metadata.get("check"), f.metadata.get("rule", "")
        try:
            value = _coerce(data[name], tp, where, src, error)
        except Exception as err:
            if not isinstance(err, error | ConfigError):
                raise
            nested = any(dataclasses.is_dataclass(a) for a in typing.get_args(tp))
            if not rule or getattr(err, "non_finite", False) or nested:
                raise
            raise error(f"{src}: {where} must be {rule}, got {data[name]!r}") from None
        if check is not None and value is not None and not check(value):
            raise error(f"{src}: {where} must be {rule}, got {data[name]!r}")
        kwargs[name] = value
    return cls(**kwargs)


def build(cls: type[_T], data: Any, source: str = "config", error: type[Exception] = ConfigError) -> _T:
    """Validate a plain dict (e.g. parsed YAML) into the dataclass ``cls``.

    Args:
        cls: the root dataclass.
        data: the parsed document (``None`` is an empty mapping).
        source: what to name in messages (a file path).
        error: the exception class to raise (the trainer uses its own ``ConfigError``).

    Raises:
        error: naming ``source`` and the dotted field.
    """
    result: _T = _build(cls, data, "", source, error)
    return result


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=c"`` -> ``("a.b", value)`` with the value parsed as YAML (``5`` is an int, ``[1, 2]`` a list).

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.epochs=5")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(
    data: Any, overrides: Mapping[str, Any], source: str, error: type[Exception] = ConfigError
) -> Any:
    """Set dotted keys in the parsed document (in place; returns it). ``cameras.0.x`` indexes a list."""
    if not isinstance(data, dict):
        return data
    for key, value in overrides.items():
        node: Any = data
        *parents, leaf = key.split(".")
        for p in parents:
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise error(f"{source}: cannot set {key}: no list item {p!r}")
                node = node[int(p)]
                continue
            if not isinstance(node, dict):
                break
            if node.get(p) is None:  # absent, or an empty section (`train:` with nothing under it)
                node[p] = {}
            node = node[p]
        if isinstance(node, list) and leaf.isdigit() and int(leaf) < len(node):
            node[int(leaf)] = value
            continue
        if not isinstance(node, dict):
            raise error(f"{source}: cannot set {key}: its parent in the config is not a section")
        node[leaf] = value
    return data


def load_yaml(
    path: str | Path,
    cls: type[_T],
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    error: type[Exception] = ConfigError,
) -> _T:
    """Load a YAML file, apply ``overrides`` (dotted keys, or ``"KEY=VALUE"`` strings) and validate.

    Raises:
        error: missing file, YAML syntax error (with its line), or an invalid field.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise error(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read the config ({type(err).__name__}): check the file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise error(f"{path}: not valid YAML{at}: fix the syntax") from None
    if overrides is not None and not isinstance(overrides, Mapping):
        overrides = dict(parse_override(o) for o in overrides)
    apply_overrides(data, overrides or {}, str(path), error)
    return build(cls, data, str(path), error)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON-serialisable) of a config dataclass tree."""
    return dataclasses.asdict(cfg)
