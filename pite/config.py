"""Typed YAML configs: dataclasses in, every problem out in one message.

A config class is a plain dataclass whose fields carry a docstring and constraints in
their metadata (see :func:`option`). :func:`load_config` reads YAML into the class and
collects **all** problems before raising one :class:`ConfigError`:

- unknown keys, with a did-you-mean suggestion;
- wrong types (``batch_size: "eight"``);
- values out of range or not among the allowed choices;
- files or directories that must exist but do not;
- required fields that are missing.

Example::

    @dataclass
    class Decode:
        short_side: int = option(256, "Short side (px) frames are resized to.", ge=16)
        video_root: str = option("", "Folder holding the videos.", exists="dir")

Relative paths are read relative to the current working directory (the repository root
for ``make demo`` and the tests); ``tinykit://`` model references are left as they are.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")

_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """All problems found in one config, one per line."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} config {noun}:\n{lines}")


def option(
    default: Any = _MISSING,
    doc: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: typing.Sequence[Any] | None = None,
    exists: Literal["file", "dir", "any"] | None = None,
    model: str | None = None,
    default_factory: Any = _MISSING,
) -> Any:
    """A dataclass field with a docstring and constraints.

    Args:
        default: default value; leave out for a required field.
        doc: one line for people (shown by errors and ``pite doctor``).
        ge/gt/le/lt: numeric bounds.
        choices: allowed values.
        exists: the value is a path that must exist ("file", "dir" or "any"); empty
            strings and ``None`` are allowed (the field is then unused).
        model: the value names model weights of this kind ("llm", "clip", "gdino",
            "sam", "parser", "raft"); ``pite doctor`` checks every such field.
    """
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices,
            "exists": exists, "model": model}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path, cls: type[T], overrides: typing.Sequence[str] = (),
                check_paths: bool = True) -> T:
    """Read a YAML file into ``cls``; raise :class:`ConfigError` listing every problem.

    ``overrides`` are ``dotted.key=value`` strings applied on top (values parsed as YAML).
    ``check_paths=False`` skips the must-exist checks (``pite doctor`` inspects configs
    whose data is not there yet).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [f"config file not found: {path}"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"top level must be a mapping, got {type(data).__name__}"])
    problems: list[str] = []
    for item in overrides:
        _apply_override(data, item, problems)
    obj = from_dict(cls, data, problems, check_paths=check_paths)
    if problems:
        raise ConfigError(str(path), problems)
    return obj


def from_dict(cls: type[T], data: Any, problems: list[str], where: str = "", check_paths: bool = True) -> T:
    """Build dataclass ``cls`` from ``data``, appending every problem to ``problems``."""
    label = where or "config"
    if not isinstance(data, dict):
        problems.append(f"{label}: expected a mapping, got {_describe(data)}")
        data = {}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {', '.join(fields)}"
            problems.append(f"{_join(where, key)}: unknown key{suggestion}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key_where = _join(where, name)
        if name not in data:
            if f.default is _MISSING and f.default_factory is _MISSING:
                doc = f.metadata.get("doc", "")
                problems.append(f"{key_where}: required key is missing" + (f" ({doc})" if doc else ""))
            continue
        value = _convert(hints[name], data[name], key_where, problems, check_paths)
        if value is not _INVALID:
            _check_constraints(value, f.metadata, key_where, problems, check_paths)
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError:
        # a required key was missing; problems already say which. Build with placeholders
        # so that callers collecting problems across sections can continue.
        return _placeholder(cls, kwargs)


_INVALID = object()


def _convert(tp: Any, value: Any, where: str, problems: list[str], check_paths: bool = True) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, where, problems, check_paths)
        for candidate in inner:  # first that converts cleanly
            trial: list[str] = []
            out = _convert(candidate, value, where, trial, check_paths)
            if not trial:
                return out
        problems.append(f"{where}: expected {_type_name(tp)}, got {_describe(value)}")
        return _INVALID
    if origin is Literal:
        if value not in args:
            problems.append(f"{where}: must be one of {', '.join(map(repr, args))}; got {value!r}")
            return _INVALID
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, problems, where, check_paths)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {_describe(value)}")
            return _INVALID
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                problems.append(f"{where}: expected a list of {len(args)} items, got {len(value)}")
                return _INVALID
            items = [_convert(a, v, f"{where}[{i}]", problems, check_paths) for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(item_tp, v, f"{where}[{i}]", problems, check_paths) for i, v in enumerate(value)]
        if any(v is _INVALID for v in items):
            return _INVALID
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {_describe(value)}")
            return _INVALID
        val_tp = args[1] if len(args) == 2 else Any
        out = {str(k): _convert(val_tp, v, f"{where}.{k}", problems, check_paths) for k, v in value.items()}
        return _INVALID if any(v is _INVALID for v in out.values()) else out
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    problems.append(f"{where}: expected {_type_name(tp)}, got {_describe(value)}")
    return _INVALID


def _check_constraints(value: Any, meta: typing.Mapping[str, Any], where: str, problems: list[str],
                       check_paths: bool = True) -> None:
    if value is None:
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where}: must be a finite number, got {value}")
            return
        for key, ok, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                              ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
            bound = meta.get(key)
            if bound is not None and not ok(value, bound):
                problems.append(f"{where}: must be {word} {bound}, got {value}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        problems.append(f"{where}: must be one of {', '.join(map(repr, choices))}; got {value!r}")
    exists = meta.get("exists")
    if exists and check_paths and isinstance(value, str) and value and "://" not in value:
        p = Path(value).expanduser()
        missing = (exists == "file" and not p.is_file()) or (exists == "dir" and not p.is_dir()) or (
            exists == "any" and not p.exists())
        if missing:
            what = {"file": "file", "dir": "directory", "any": "path"}[exists]
            problems.append(f"{where}: {what} not found: {p}")


def _apply_override(data: dict, item: str, problems: list[str]) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        problems.append(f"override {item!r}: expected dotted.key=value")
        return
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            problems.append(f"override {item!r}: '{part}' is not a section")
            return
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError:
        node[parts[-1]] = raw


def _placeholder(cls: type[T], kwargs: dict[str, Any]) -> T:
    obj = object.__new__(cls)
    for f in dataclasses.fields(cls):
        if f.name in kwargs:
            val = kwargs[f.name]
        elif f.default is not _MISSING:
            val = f.default
        elif f.default_factory is not _MISSING:
            val = f.default_factory()
        else:
            val = None
        object.__setattr__(obj, f.name, val)
    return obj


# ----------------------------------------------------------------------------- helpers


def iter_fields(obj: Any, where: str = ""):
    """Yield ``(dotted_name, value, metadata)`` for every leaf field of a config object."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = _join(where, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_fields(value, name)
        elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            for i, v in enumerate(value):
                yield from iter_fields(v, f"{name}[{i}]")
        else:
            yield name, value, f.metadata


def to_dict(obj: Any) -> Any:
    """Plain-data copy of a config object (for logging and run records)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _type_name(tp: Any) -> str:
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if get_origin(tp) in (list, tuple):
        return "a list"
    return getattr(tp, "__name__", str(tp))
