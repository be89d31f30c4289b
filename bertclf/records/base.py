"""The base of every record: to_dict/from_dict and to_json/from_json with a format version (bertclf.records)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, ClassVar, TypeVar

from bertclf.errors import RecordError
from bertclf.labels import LabelSpace

R = TypeVar("R", bound="Record")


class Record:
    """Base of the records: to_dict/from_dict (JSON-ready values), to_json/from_json (text).

    Subclasses are dataclasses; a field's JSON key is its name unless `metadata={"json": key}` says otherwise.
    `upgrade` turns an older format's dict into the current one.
    """

    FORMAT: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values, with its format version (nested records carry none of their own)."""
        return {"format": self.FORMAT, **self._fields_dict()}

    def _fields_dict(self) -> dict[str, Any]:
        return {f.metadata.get("json", f.name): _encode(getattr(self, f.name))
                for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=indent is not None)

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        if not isinstance(data, dict):
            raise RecordError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        version = int(data.get("format", 1))
        if version > cls.FORMAT:
            raise RecordError(f"{cls.__name__} format {version} is newer than this bertclf reads ({cls.FORMAT}): "
                              "upgrade bertclf")
        data = cls.upgrade(dict(data), version)
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            key = f.metadata.get("json", f.name)
            if key in data:
                values[f.name] = _decode(hints[f.name], data[key])
        try:
            return cls(**values)
        except TypeError as exc:
            raise RecordError(f"{cls.__name__} is missing fields: {exc}") from None

    @classmethod
    def from_json(cls: type[R], text: str | bytes) -> R:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{cls.__name__}: not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """An older format's dict in the current shape; the default: the shape did not change."""
        return data


def _encode(value: Any) -> Any:
    if isinstance(value, Record):
        return value._fields_dict()
    if isinstance(value, LabelSpace):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(hint: Any, value: Any) -> Any:
    """A JSON value as the field's type: records and LabelSpace rebuilt, containers walked, the rest as is."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if isinstance(hint, types.UnionType) or origin is typing.Union:
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        return _decode(options[0], value) if len(options) == 1 else value
    if isinstance(hint, type) and issubclass(hint, Record | LabelSpace):
        return hint.from_dict(value)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return [_decode(item, v) for v in value]
    if origin is tuple:
        item = (typing.get_args(hint) or (Any,))[0]
        return tuple(_decode(item, v) for v in value)
    if origin is dict:
        _, item = typing.get_args(hint) or (str, Any)
        return {k: _decode(item, v) for k, v in value.items()}
    return value


__all__ = ["Record"]
