"""Read-your-writes: what the site believes now.

Rows from the site's database (its replica, or the one database of an
embedded site) are overlaid field by field by buffered records, then by
buffered updates, de-duplicated by key. A buffered delete hides the row. Once
a transaction is replicated its cache entries are released and the database
answers alone, with the same values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering._codec import decode_value
from ccat_buffering.columns import ModelColumns, columns_of
from ccat_buffering.errors import DatabaseUnavailableError, TransactionValidationError
from ccat_buffering.manager import record_id
from ccat_buffering.protocols import CachedRecord, CacheStore
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.retry import FailureKind, classify_failure

__all__ = ["Reads"]

Row = dict[str, Any]
ModelLike = str | type[Any]
"""A model's name, or the SQLAlchemy mapped class itself."""


def _decoded(record: CachedRecord) -> Row:
    return {name: decode_value(value) for name, value in record.fields.items()}


def _overlay(row: Mapping[str, Any] | None, cached: CachedRecord | None) -> Row | None:
    if cached is None:
        return None if row is None else dict(row)
    if cached.deleted:
        return None
    if row is None and not cached.created:
        # An update to a row the site has not seen yet: too little to show.
        return None
    return {**(row or {}), **_decoded(cached)}


class Reads:
    """Merges database rows with buffered records of the same model.

    Args:
        cache: The site's cache store.
        registry: Mapped classes, for key fields and database lookups.
        engine: The database to read rows from (the replica at a secondary
            site); without one, only :meth:`merge` can be given rows.
    """

    def __init__(
        self,
        cache: CacheStore,
        registry: ModelRegistry | None = None,
        engine: AsyncEngine | None = None,
    ) -> None:
        self.cache = cache
        self.registry = registry
        self.engine = engine

    def _key_fields(self, model: str) -> tuple[str, ...]:
        if self.registry is not None and model in self.registry:
            return self.registry.key_fields(model)
        return ("id",)

    def _as_row(self, model: str, row: Any) -> Row:
        if isinstance(row, Mapping):
            return dict(row)
        if self.registry is None:
            raise TypeError(f"cannot read fields of {row!r} without a model registry")
        return {name: getattr(row, name) for name in self.registry.fields(model)}

    async def _rows(self, model: str, *conditions: Any) -> list[Row]:
        if self.engine is None or self.registry is None:
            return []
        cls = self.registry.model(model)
        fields = sorted(self.registry.fields(model))
        statement = select(*(getattr(cls, f) for f in fields))
        if conditions:
            statement = statement.where(*conditions)
        try:
            async with self.engine.connect() as conn:
                result = await conn.execute(statement)
                return [dict(zip(fields, r, strict=True)) for r in result]
        except Exception as exc:
            if classify_failure(exc) is FailureKind.OUTAGE:
                raise DatabaseUnavailableError(
                    f"the site's database cannot be read ({exc}); buffered records alone "
                    "are available through a Reads without an engine"
                ) from exc
            raise

    def _name(self, model: ModelLike) -> str:
        return model if isinstance(model, str) else model.__name__

    def _columns(self, model: str) -> ModelColumns | None:
        if self.registry is not None and model in self.registry:
            return columns_of(self.registry.model(model))
        return None

    def _shown(self, model: str, row: Row | None) -> Row | None:
        """A record as reads show it, from the buffer or the database alike."""
        columns = self._columns(model)
        return row if row is None or columns is None else columns.read(row)

    def _key_values(self, model: str, key: Any) -> dict[str, Any] | None:
        """The key given to :meth:`get`, by field, converted by column type."""
        key_fields = self._key_fields(model)
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
        columns = self._columns(model)
        if columns is not None:
            try:
                values = columns.convert(values, f"a key of {model}")
            except TransactionValidationError:
                return None  # no row can have it
        return {name: values[name] for name in key_fields}

    def _keys_of(self, model: str, field: str, record_ids: Iterable[str]) -> list[Any]:
        """Key values back from single-key record ids (``key_text`` undone)."""
        columns = self._columns(model)
        keys = []
        for rid in record_ids:
            text = unquote(rid)
            if columns is None:
                keys.append(text)
                continue
            try:
                keys.append(columns.convert({field: text}, model)[field])
            except TransactionValidationError:
                continue  # not a key the database can hold
        return keys

    async def get(self, model: ModelLike, key: Any) -> Row | None:
        """One record as the site sees it.

        Args:
            model: The mapped class or its name.
            key: Its key: the value (in any form its column accepts, so the
                text of a UUID or a date does), a tuple or mapping of the parts
                of a composite key, or their text joined by ``,``.

        Returns:
            The record's fields, or ``None`` if it does not exist (or a
            buffered delete removed it).
        """
        name = self._name(model)
        values = self._key_values(name, key)
        if values is None:
            return None
        rid = record_id(values, list(values))
        cached = None if rid is None else await self.cache.get(name, rid)
        row = None
        if self.engine is not None and self.registry is not None:
            cls = self.registry.model(name)
            conditions = [getattr(cls, field) == value for field, value in values.items()]
            rows = await self._rows(name, *conditions)
            row = rows[0] if rows else None
        return self._shown(name, _overlay(row, cached))

    async def merge(self, model: ModelLike, rows: Iterable[Any]) -> list[Row]:
        """Overlay buffered records over rows the caller read itself.

        Rows keep their order; buffered creates not among them follow, in the
        order they were buffered; rows a buffered delete removed are dropped.

        Args:
            model: The model's name.
            rows: Mappings or mapped instances.

        Returns:
            The records as the site sees them, one per key.
        """
        name = self._name(model)
        return self._merge(name, rows, await self.cache.list(name))

    def _merge(self, model: str, rows: Iterable[Any], records: Iterable[CachedRecord]) -> list[Row]:
        key_fields = self._key_fields(model)
        columns = self._columns(model)
        cached = {c.record_id: c for c in records}
        merged: dict[str, Row] = {}
        for raw in rows:
            row = self._as_row(model, raw)
            key = {f: row.get(f) for f in key_fields}
            if columns is not None:
                # A database row, read as records show it, then in its buffered form.
                key = columns.convert(columns.read(key), f"a row of {model}")
            rid = record_id(key, key_fields)
            if rid is None or rid in merged:
                continue
            result = _overlay(row, cached.pop(rid, None))
            if result is not None:
                merged[rid] = result
        for rid, record in cached.items():
            result = _overlay(None, record)
            if result is not None and rid not in merged:
                merged[rid] = result
        return [self._shown(model, row) or row for row in merged.values()]

    async def list(self, model: ModelLike, **equals: Any) -> list[Row]:
        """Records of ``model`` whose fields equal ``equals``, as the site sees them.

        Filtering applies after the overlay, so a buffered update that makes
        a row match (or stop matching) counts. Filter values are converted by
        column type, as written values are.

        Args:
            model: The mapped class or its name.
            **equals: Field values to match.

        Returns:
            Matching records.
        """
        name = self._name(model)
        columns = self._columns(name)
        try:
            written = equals if columns is None else columns.convert(equals, f"a filter of {name}")
        except TransactionValidationError:
            if self.registry is not None and set(equals) - self.registry.fields(name):
                raise ValueError(f"{name} has no field(s) {sorted(equals)}") from None
            return []  # a value no row of the model can hold
        shown = written if columns is None else columns.read(written)
        records = await self.cache.list(name)
        rows: list[Row] = []
        if self.engine is not None and self.registry is not None:
            cls = self.registry.model(name)
            unknown = sorted(set(equals) - self.registry.fields(name))
            if unknown:
                raise ValueError(f"{name} has no field(s) {unknown}")
            cached_ids = [c.record_id for c in records]
            match = [getattr(cls, k) == v for k, v in written.items()]
            key_fields = self._key_fields(name)
            condition: Any = and_(*match) if match else None
            if condition is not None and cached_ids and len(key_fields) == 1:
                key = getattr(cls, key_fields[0])
                ids = self._keys_of(name, key_fields[0], cached_ids)
                condition = or_(condition, key.in_(ids))
            rows = await self._rows(name, *([] if condition is None else [condition]))
        merged = self._merge(name, rows, records)
        return [r for r in merged if all(r.get(k) == v for k, v in shown.items())]
