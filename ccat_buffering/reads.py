"""Read-your-writes: what the site believes now.

Rows from the site's database (its replica, or the one database of an
embedded site) are overlaid field by field by buffered records, then by
buffered updates, de-duplicated by key. A buffered delete hides the row. Once
a transaction is replicated its cache entries are released and the database
answers alone, with the same values, in the same shape.

A read costs what it returns: the cache store finds buffered records by field
value through an index (:meth:`~ccat_buffering.protocols.CacheStore.find`),
the database is asked for the rows that match and for the rows of those
buffered records, key lists are sent in slices under the drivers' parameter
limits, and every database call has a timeout.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import and_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ccat_buffering._codec import decode_value, encode_value
from ccat_buffering._read_database import ReadDatabase
from ccat_buffering._record_keys import key_values, keys_of, row_id, rules_of
from ccat_buffering.cache_writes import record_id
from ccat_buffering.errors import DatabaseUnavailableError, TransactionValidationError
from ccat_buffering.protocols import CachedRecord, CacheStore
from ccat_buffering.registry import ModelRegistry

__all__ = ["DEFAULT_READ_TIMEOUT", "Reads", "Record", "Records"]

DEFAULT_READ_TIMEOUT = 5.0
Row = dict[str, Any]
ModelLike = str | type[Any]
"""A model's name, or the SQLAlchemy mapped class itself."""


class Record(dict[str, Any]):
    """A record as the site sees it: a ``dict`` of its fields.

    Attributes:
        partial: The database could not be read, so the record is what the
            buffer alone knows (only when the caller allowed it).
    """

    partial: bool = False


class Records(list[Record]):
    """Records as the site sees them: a ``list``.

    Attributes:
        partial: The database could not be read: these are the buffered
            records alone (only when the caller allowed it).
        reason: Why the database could not be read, when ``partial``.
    """

    partial: bool = False
    reason: str | None = None


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
            site); without one, only buffered records are known.
        timeout: Seconds a read may wait for the database (connecting
            included) before it counts as unavailable.
        allow_partial: When the database cannot be read, answer with what the
            buffer knows, marked ``partial``, instead of raising
            :class:`~ccat_buffering.DatabaseUnavailableError`; each call can
            override it.
    """

    def __init__(
        self,
        cache: CacheStore,
        registry: ModelRegistry | None = None,
        engine: AsyncEngine | None = None,
        *,
        timeout: float = DEFAULT_READ_TIMEOUT,
        allow_partial: bool = False,
    ) -> None:
        self.cache = cache
        self.registry = registry
        self.engine = engine
        self.timeout = timeout
        self.allow_partial = allow_partial
        self.calls = 0  # get, get_many, list and merge calls, for a service's metrics
        self._columns: dict[str, tuple[tuple[str, Any], ...]] = {}
        self._db = (
            None if engine is None or registry is None else ReadDatabase(engine, registry, timeout)
        )

    # -- the shape of a record ----------------------------------------------

    def _column_defaults(self, model: str) -> tuple[tuple[str, Any], ...]:
        """The model's columns in declaration order, each with its scalar Python default."""
        columns = self._columns.get(model)
        if columns is None:
            assert self.registry is not None
            columns = tuple(
                (attr.key, _scalar_default(attr.columns[0]))
                for attr in self.registry.mapper(model).column_attrs
            )
            self._columns[model] = columns
        return columns

    def _record(self, model: str, values: Mapping[str, Any]) -> Record:
        """The one place a database row or buffered fields become a returned record.

        A record carries every mapped column in the model's order: one not set
        by a buffered create shows its Python default (a scalar one) or
        ``None`` until replication brings what the database filled in. Values
        pass through their columns' read rules, so that a record shows the same
        types from the buffer as from the database (enum members, aware UTC
        datetimes, plain ``uuid.UUID``).
        """
        rules = rules_of(self.registry, model)
        if rules is None:
            return Record(values)
        return Record(
            rules.read(
                {name: values.get(name, default) for name, default in self._column_defaults(model)}
            )
        )

    def _name(self, model: ModelLike) -> str:
        return model if isinstance(model, str) else model.__name__

    def _names(self, model: str) -> builtins.list[str]:
        return [name for name, _ in self._column_defaults(model)]

    def _as_row(self, model: str, row: Any) -> Row:
        if isinstance(row, Mapping):
            return dict(row)
        if self.registry is None:
            raise TypeError(f"cannot read fields of {row!r} without a model registry")
        return {name: getattr(row, name) for name, _ in self._column_defaults(model)}

    def _partial(self, allow_partial: bool | None) -> bool:
        return self.allow_partial if allow_partial is None else allow_partial

    # -- reading ----------------------------------------------------------------

    async def get(
        self, model: ModelLike, key: Any, *, allow_partial: bool | None = None
    ) -> Record | None:
        """One record as the site sees it.

        Args:
            model: The mapped class or its name.
            key: Its key: the value (in any form its column accepts, so the
                text of a UUID or a date does), a tuple or mapping of the parts
                of a composite key, or their text joined by ``,``.
            allow_partial: Overrides the ``Reads``' own setting for this call.

        Returns:
            The record's fields, or ``None`` if it does not exist (or a
            buffered delete removed it).

        Raises:
            DatabaseUnavailableError: The database cannot be read in time, and
                partial answers are not allowed or the buffer has no record
                to show.
        """
        self.calls += 1
        name = self._name(model)
        values = key_values(self.registry, name, key)
        if values is None:
            return None
        rid = record_id(values, list(values))
        cached = None if rid is None else await self.cache.get(name, rid)
        db = self._db
        if db is None:
            merged = _overlay(None, cached)
            return None if merged is None else self._record(name, merged)
        names = self._names(name)
        keys = [tuple(values.values())]
        try:
            rows = await db.run(lambda conn: db.by_keys(conn, name, names, keys))
        except DatabaseUnavailableError:
            shown = _overlay(None, cached)
            if not self._partial(allow_partial) or shown is None:
                raise
            record = self._record(name, shown)
            record.partial = True
            return record
        row = rows[0] if rows else None
        merged = _overlay(row, cached)
        return None if merged is None else self._record(name, merged)

    async def get_many(self, model: ModelLike, keys: Sequence[Any]) -> builtins.list[Row | None]:
        """Several records as the site sees them, in the order of ``keys``.

        One call to the buffer and one to the database however many keys (a
        bulk update's bases at submit); :meth:`get` for each key would cost
        two round trips a key.

        Returns:
            Each key's fields, or ``None`` where it does not exist.

        Raises:
            DatabaseUnavailableError: The database cannot be read in time.
        """
        self.calls += 1
        name = self._name(model)
        values = [key_values(self.registry, name, key) for key in keys]
        ids = [None if v is None else record_id(v, list(v)) for v in values]
        asked = [rid for rid in ids if rid is not None]
        found_cached = await self.cache.get_many(name, asked) if asked else []
        cached = dict(zip(asked, found_cached, strict=True))
        rows: dict[str | None, Row] = {}
        db = self._db
        if db is not None and asked:
            names = self._names(name)
            wanted = [tuple(v.values()) for v in values if v is not None]
            found = await db.run(lambda conn: db.by_keys(conn, name, names, wanted))
            rows = {row_id(self.registry, name, row): row for row in found}
        out: builtins.list[Row | None] = []
        for rid in ids:
            merged = None if rid is None else _overlay(rows.get(rid), cached.get(rid))
            out.append(None if merged is None else self._record(name, merged))
        return out

    async def merge(self, model: ModelLike, rows: Iterable[Any]) -> Records:
        """Overlay buffered records over rows the caller read itself.

        Rows keep their order; buffered creates not among them follow, in the
        order they were buffered; rows a buffered delete removed are dropped.
        Every buffered record of the model is read: prefer :meth:`list`.

        Args:
            model: The mapped class or its name.
            rows: Mappings or mapped instances.

        Returns:
            The records as the site sees them, one per key.
        """
        self.calls += 1
        name = self._name(model)
        return self._merge(name, rows, await self.cache.list(name))

    def _merge(self, model: str, rows: Iterable[Any], records: Iterable[CachedRecord]) -> Records:
        cached = {c.record_id: c for c in records}
        merged: dict[str, Record] = {}
        for raw in rows:
            row = self._as_row(model, raw)
            rid = row_id(self.registry, model, row)
            if rid is None or rid in merged:
                continue
            result = _overlay(row, cached.pop(rid, None))
            if result is not None:
                merged[rid] = self._record(model, result)
        for rid, record in cached.items():
            result = _overlay(None, record)
            if result is not None and rid not in merged:
                merged[rid] = self._record(model, result)
        return Records(merged.values())

    async def list(
        self, model: ModelLike, *, allow_partial: bool | None = None, **equals: Any
    ) -> Records:
        """Records of ``model`` whose fields equal ``equals``, as the site sees them.

        Filtering applies after the overlay, so a buffered update that makes
        a row match (or stop matching) counts. The cost follows the records
        returned: the database is asked for the rows that match and for the
        rows of buffered records that hold a value of the filter; the buffer
        for the records holding a value of the filter and for those of the
        rows. Filter values are converted by column type, as written values are.

        Args:
            model: The mapped class or its name.
            allow_partial: Overrides the ``Reads``' own setting for this call.
            **equals: Field values to match.

        Returns:
            Matching records; ``partial`` when the database could not be read
            and partial answers are allowed.

        Raises:
            ValueError: With an engine: ``model`` has no such field.
            DatabaseUnavailableError: The database cannot be read in time and
                partial answers are not allowed.
        """
        self.calls += 1
        name = self._name(model)
        if self.registry is not None and name in self.registry:
            unknown = sorted(set(equals) - self.registry.fields(name))
            if unknown:
                raise ValueError(f"{name} has no field(s) {unknown}")
        rules = rules_of(self.registry, name)
        written, shown = dict(equals), dict(equals)
        if rules is not None:
            try:
                written = rules.convert(equals, f"a filter of {name}")
            except TransactionValidationError:
                return Records()  # a value no row of the model can hold
            shown = rules.read(written)
        if written:
            encoded = {field: encode_value(value, field) for field, value in written.items()}
            found = await self.cache.find(name, encoded)
        else:
            found = await self.cache.list(name)
        db = self._db
        if db is None:
            return self._matching(self._merge(name, [], found), shown)
        try:
            rows, records = await db.run(
                lambda conn: self._rows_for(conn, db, name, written, found)
            )
        except DatabaseUnavailableError as exc:
            if not self._partial(allow_partial):
                raise
            partial = self._matching(self._merge(name, [], found), shown)
            partial.partial, partial.reason = True, str(exc)
            for record in partial:
                record.partial = True
            return partial
        return self._matching(self._merge(name, rows, records), shown)

    async def _rows_for(
        self,
        conn: AsyncConnection,
        db: ReadDatabase,
        model: str,
        equals: Mapping[str, Any],
        found: Sequence[CachedRecord],
    ) -> tuple[builtins.list[Row], builtins.list[CachedRecord]]:
        """The rows a filtered list needs, and the buffered records over them."""
        cls = db.registry.model(model)
        names = self._names(model)
        match = [getattr(cls, name) == value for name, value in equals.items()]
        rows = await db.select(conn, model, names, [and_(*match)] if match else [])
        if not equals:
            return rows, list(found)
        known = {c.record_id for c in found}
        row_ids = [rid for row in rows if (rid := row_id(self.registry, model, row)) is not None]
        # A buffered update of a row the filter did not select may make it match:
        # its row is needed, unless one of its own values already rules it out.
        selected = set(row_ids)
        needed = [
            c.record_id
            for c in found
            if not (c.created or c.deleted or c.record_id in selected or _contradicts(c, equals))
        ]
        rows += await db.by_keys(conn, model, names, keys_of(self.registry, model, needed))
        unknown = [rid for rid in row_ids if rid not in known]
        over_rows = await self.cache.get_many(model, unknown) if unknown else []
        return rows, [*found, *(r for r in over_rows if r is not None)]

    @staticmethod
    def _matching(records: Records, equals: Mapping[str, Any]) -> Records:
        kept = Records(r for r in records if all(r.get(k) == v for k, v in equals.items()))
        return kept


def _contradicts(record: CachedRecord, equals: Mapping[str, Any]) -> bool:
    fields = _decoded(record)
    return any(name in fields and fields[name] != value for name, value in equals.items())


def _scalar_default(column: Any) -> Any:
    default = getattr(column, "default", None)
    if default is not None and getattr(default, "is_scalar", False):
        return default.arg
    return None
