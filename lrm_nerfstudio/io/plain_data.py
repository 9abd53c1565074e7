"""Config dataclasses <-> plain JSON data, checked field by field, so that a shared file only ever holds data.

`to_plain` turns a config dataclass into dicts, lists, strings and numbers: nested dataclasses become dicts,
tuples become lists, paths become strings, and `_target` (a class, i.e. code) is left out. `from_plain` rebuilds
the dataclass from such data and checks it against the annotations: an unknown field, a missing field, or a value
of the wrong type (including `Literal` choices, fixed-length tuples and nested dataclasses) raises
`PlainDataError` naming the field's path, e.g. `model.transformer.num_layers`. Nothing is imported or called by
name: the target classes are given by the caller.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin


class PlainDataError(ValueError):
    """Plain data that does not fit a config dataclass; `path` is the dotted field path."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"field {path}: {problem}")
        self.path = path
        self.problem = problem


SKIPPED_FIELDS = frozenset({"_target"})
"""Fields never written: nerfstudio's `_target` is the class a config builds (code, not data)."""


def data_fields(cls: type) -> list[dataclasses.Field]:
    """The init fields of dataclass `cls` that travel as data."""
    return [f for f in dataclasses.fields(cls) if f.init and f.name not in SKIPPED_FIELDS]


def to_plain(value: Any) -> Any:
    """`value` as JSON-ready data (see the module docstring)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in data_fields(type(value))}
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{type(value).__name__} is not plain data")


def from_plain(cls: type, data: Any, path: str) -> Any:
    """An instance of dataclass `cls` from `data`, every field checked (see the module docstring).

    Raises:
        PlainDataError: the first field that does not fit, by its dotted path below `path`.
    """
    if not isinstance(data, dict):
        raise PlainDataError(path, f"expected an object ({cls.__name__}), got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in data_fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise PlainDataError(f"{path}.{unknown[0]}", f"unknown field (not part of {cls.__name__})")
    missing = [n for n in names if n not in data]
    if missing:
        raise PlainDataError(f"{path}.{missing[0]}", "missing")
    kwargs = {name: _value(hints[name], data[name], f"{path}.{name}") for name in names}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # a config's own __post_init__ check
        raise PlainDataError(path, f"rejected by {cls.__name__} ({err})") from err


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _value(tp: Any, value: Any, path: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return _value(arm, value, path)
            except PlainDataError as err:
                errors.append(err.problem)
        raise PlainDataError(path, " or ".join(errors))
    if origin is Literal:
        # `True == 1`: compare the type too, so that a bool never passes for an int choice
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise PlainDataError(path, f"expected one of {list(args)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list):
            raise PlainDataError(path, f"expected a list, got {_kind(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_value(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise PlainDataError(path, f"expected a list of {len(args)} items, got {len(value)}")
        return tuple(_value(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, list):
            raise PlainDataError(path, f"expected a list, got {_kind(value)}")
        return [_value(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise PlainDataError(path, f"expected an object, got {_kind(value)}")
        return {_value(args[0], k, path): _value(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_plain(tp, value, path)
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
    elif tp is Path:
        if isinstance(value, str):
            return Path(value)
    elif tp is type(None):
        if value is None:
            return None
    else:
        raise PlainDataError(path, f"the field's type {tp!r} cannot be read from plain data")
    raise PlainDataError(path, f"expected {getattr(tp, '__name__', tp)}, got {_kind(value)} {value!r:.40}")
