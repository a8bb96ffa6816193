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

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering._codec import decode_value
from ccat_buffering.errors import DatabaseUnavailableError
from ccat_buffering.manager import record_id
from ccat_buffering.protocols import CachedRecord, CacheStore
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.retry import FailureKind, classify_failure

__all__ = ["Reads"]

Row = dict[str, Any]


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

    async def get(self, model: str, record_id_: str) -> Row | None:
        """One record as the site sees it.

        Args:
            model: The model's name.
            record_id_: Its key as text (``"a,b"`` for a composite key).

        Returns:
            The record's fields, or ``None`` if it does not exist (or a
            buffered delete removed it).
        """
        cached = await self.cache.get(model, record_id_)
        row = None
        if self.engine is not None and self.registry is not None:
            cls = self.registry.model(model)
            key_fields = self._key_fields(model)
            parts = record_id_.split(",") if len(key_fields) > 1 else [record_id_]
            if len(parts) != len(key_fields):
                return _overlay(None, cached)  # not a key of this model's shape
            conditions = [
                getattr(cls, name) == self._cast(cls, name, value)
                for name, value in zip(key_fields, parts, strict=True)
            ]
            rows = await self._rows(model, *conditions)
            row = rows[0] if rows else None
        return _overlay(row, cached)

    @staticmethod
    def _cast(cls: type[Any], name: str, value: str) -> Any:
        try:
            python_type = getattr(cls, name).type.python_type
        except (AttributeError, NotImplementedError):
            return value
        return python_type(value) if python_type in (int, float) else value

    async def merge(self, model: str, rows: Iterable[Any]) -> list[Row]:
        """Overlay buffered records over rows the caller read itself.

        Rows keep their order; buffered creates not among them follow, in the
        order they were buffered; rows a buffered delete removed are dropped.

        Args:
            model: The model's name.
            rows: Mappings or mapped instances.

        Returns:
            The records as the site sees them, one per key.
        """
        return self._merge(model, rows, await self.cache.list(model))

    def _merge(self, model: str, rows: Iterable[Any], records: Iterable[CachedRecord]) -> list[Row]:
        key_fields = self._key_fields(model)
        cached = {c.record_id: c for c in records}
        merged: dict[str, Row] = {}
        for raw in rows:
            row = self._as_row(model, raw)
            rid = record_id(row, key_fields)
            if rid is None or rid in merged:
                continue
            result = _overlay(row, cached.pop(rid, None))
            if result is not None:
                merged[rid] = result
        for rid, record in cached.items():
            result = _overlay(None, record)
            if result is not None and rid not in merged:
                merged[rid] = result
        return list(merged.values())

    async def list(self, model: str, **equals: Any) -> list[Row]:
        """Records of ``model`` whose fields equal ``equals``, as the site sees them.

        Filtering applies after the overlay, so a buffered update that makes
        a row match (or stop matching) counts.

        Args:
            model: The model's name.
            **equals: Field values to match.

        Returns:
            Matching records.
        """
        records = await self.cache.list(model)
        rows: list[Row] = []
        if self.engine is not None and self.registry is not None:
            cls = self.registry.model(model)
            unknown = sorted(set(equals) - self.registry.fields(model))
            if unknown:
                raise ValueError(f"{model} has no field(s) {unknown}")
            cached_ids = [c.record_id for c in records]
            match = [getattr(cls, k) == v for k, v in equals.items()]
            key_fields = self._key_fields(model)
            condition: Any = and_(*match) if match else None
            if condition is not None and cached_ids and len(key_fields) == 1:
                key = getattr(cls, key_fields[0])
                ids = [self._cast(cls, key_fields[0], rid) for rid in cached_ids]
                condition = or_(condition, key.in_(ids))
            rows = await self._rows(model, *([] if condition is None else [condition]))
        merged = self._merge(model, rows, records)
        return [r for r in merged if all(r.get(k) == v for k, v in equals.items())]
