"""A model's key as reads meet it: given to ``get``, inside record ids, in database rows.

Record ids are made by :func:`~ccat_buffering.buffer.cache_writes.record_id`;
:func:`keys_of` reads them back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from ccat_buffering.buffer.cache_writes import record_id
from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.write.columns import ModelColumns, columns_of
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["fields_of", "key_values", "keys_of", "row_id", "rules_of"]


def fields_of(registry: ModelRegistry | None, model: str) -> tuple[str, ...]:
    """The model's key fields; ``id`` for a model the registry does not know."""
    if registry is not None and model in registry:
        return registry.key_fields(model)
    return ("id",)


def rules_of(registry: ModelRegistry | None, model: str) -> ModelColumns | None:
    """The model's column rules, or ``None`` for a model the registry does not know."""
    if registry is not None and model in registry:
        return columns_of(registry.model(model))
    return None


def key_values(registry: ModelRegistry | None, model: str, key: Any) -> dict[str, Any] | None:
    """The key given to :meth:`Reads.get`, by field, converted by column type, or ``None``."""
    key_fields = fields_of(registry, model)
    if isinstance(key, Mapping):
        values = dict(key)
    elif isinstance(key, tuple | list):
        values = dict(zip(key_fields, key, strict=False)) if len(key) == len(key_fields) else {}
    elif len(key_fields) > 1 and isinstance(key, str):
        values = dict(zip(key_fields, key.split(","), strict=False))
    else:
        values = {key_fields[0]: key} if len(key_fields) == 1 else {}
    if set(values) != set(key_fields):
        return None  # not a key of this model's shape
    rules = rules_of(registry, model)
    if rules is not None:
        try:
            values = rules.convert(values, f"a key of {model}")
        except TransactionValidationError:
            return None  # no row can have it
    return {name: values[name] for name in key_fields}


def keys_of(
    registry: ModelRegistry | None, model: str, record_ids: Iterable[str]
) -> list[tuple[Any, ...]]:
    """Key values back from record ids (``key_text`` undone), as columns take them."""
    key_fields = fields_of(registry, model)
    keys = []
    for rid in record_ids:
        parts = [unquote(p) for p in rid.split(",")] if len(key_fields) > 1 else [unquote(rid)]
        values = key_values(registry, model, tuple(parts))
        if values is not None:
            keys.append(tuple(values.values()))
    return keys


def row_id(registry: ModelRegistry | None, model: str, row: Mapping[str, Any]) -> str | None:
    """A database row's record id, from its key in the buffered form."""
    key_fields = fields_of(registry, model)
    key = {f: row.get(f) for f in key_fields}
    rules = rules_of(registry, model)
    if rules is not None:
        try:
            key = rules.convert(rules.read(key), f"a row of {model}")
        except TransactionValidationError:
            return None
    return record_id(key, key_fields)
