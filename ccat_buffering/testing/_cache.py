"""The contract of :class:`~ccat_buffering.buffer.protocols.CacheStore`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ccat_buffering.buffer.protocols import Backend, CachedRecord, CacheKind, CacheWrite
from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.testing._cache_lookup import CacheLookupContract

__all__ = ["CacheStoreContract"]

OBS = "Observation"
INSTRUMENT = "Instrument"


def create(record_id: str, model: str = OBS, **fields: Any) -> CacheWrite:
    """A buffered create of ``record_id``."""
    return CacheWrite(model, record_id, CacheKind.CREATE, fields)


def update(record_id: str, model: str = OBS, **fields: Any) -> CacheWrite:
    """A buffered update of ``record_id``."""
    return CacheWrite(model, record_id, CacheKind.UPDATE, fields)


def delete(record_id: str, model: str = OBS) -> CacheWrite:
    """A buffered delete of ``record_id``."""
    return CacheWrite(model, record_id, CacheKind.DELETE)


class CacheStoreContract(CacheLookupContract):
    """The caches: write, get, list, get_many, find, created_by, extend and release."""

    @staticmethod
    async def cached(backend: Backend, record_id: str, model: str = OBS) -> CachedRecord:
        """The cached record, which the test expects to be there."""
        record = await backend.cache.get(model, record_id)
        assert record is not None, f"{model} {record_id} is not cached"
        return record

    @staticmethod
    async def listed(backend: Backend, model: str = OBS) -> list[str]:
        """The ids ``list`` returns for ``model``, in order."""
        return [record.record_id for record in await backend.cache.list(model)]

    async def test_cache_unknown_record(self, backend: Backend) -> None:
        """Nothing is cached for a record never written."""
        assert await backend.cache.get(OBS, "r1") is None
        assert await backend.cache.created_by(OBS, "r1") is None
        assert await backend.cache.list(OBS) == []

    async def test_cache_field_names_must_be_identifiers(self, backend: Backend) -> None:
        """A field name that is not a plain identifier is refused; nothing is written."""
        for name in ("a=b", "x\ny", "a\x1fb", "", "a b"):
            good = create("r0", a=1)
            bad = CacheWrite(OBS, "r1", CacheKind.CREATE, {"a": 1, name: 2})
            with pytest.raises(TransactionValidationError, match="field name"):
                await backend.cache.write("t1", [good, bad], 60.0)
        assert await backend.cache.list(OBS) == []

    async def test_cache_refuses_odd_transaction_ids_and_kinds(self, backend: Backend) -> None:
        """A transaction id with a comma, space or newline, or an unknown kind, is refused."""
        for transaction_id in ("a,b", "a b", "a\nb", "", "a\x1fb"):
            with pytest.raises(TransactionValidationError, match="transaction id"):
                await backend.cache.write(transaction_id, [create("r1", a=1)], 60.0)
        odd = CacheWrite(OBS, "r1", "upsert", {"a": 1})  # type: ignore[arg-type]
        with pytest.raises(TransactionValidationError, match="kind 'upsert'"):
            await backend.cache.write("t1", [create("r0", a=1), odd], 60.0)
        assert await backend.cache.list(OBS) == []

    async def test_cache_create(self, backend: Backend) -> None:
        """A create caches the whole record and names its transaction in the ID cache."""
        await backend.cache.write("t1", [create("r1", a=1, b="x")], 60.0)
        record = await self.cached(backend, "r1")
        assert (record.model, record.record_id) == (OBS, "r1")
        assert dict(record.fields) == {"a": 1, "b": "x"}
        assert (record.created, record.deleted, record.transaction_ids) == (True, False, ("t1",))
        self.assert_time(record.expires_at, self.now() + 60.0, "expires_at")
        assert await backend.cache.created_by(OBS, "r1") == "t1"

    async def test_cache_fields_round_trip(self, backend: Backend) -> None:
        """JSON-compatible values come back as they were written."""
        fields: dict[str, Any] = {
            "text": "Cerro Chajnantor 5600 m",
            "n": 7,
            "x": 0.25,
            "ok": True,
            "none": None,
            "list": [1, "two", None],
            "nested": {"a": {"b": [1.5, False]}},
        }
        await backend.cache.write("t1", [create("r1", **fields)], 60.0)
        assert dict((await self.cached(backend, "r1")).fields) == fields

    async def test_cache_create_replaces_fields(self, backend: Backend) -> None:
        """A later create replaces the fields and the ID-cache entry."""
        await backend.cache.write("t1", [create("r1", a=1, b=2)], 60.0)
        await backend.cache.write("t2", [create("r1", c=3)], 60.0)
        assert dict((await self.cached(backend, "r1")).fields) == {"c": 3}
        assert await backend.cache.created_by(OBS, "r1") == "t2"

    async def test_cache_update_merges_field_by_field(self, backend: Backend) -> None:
        """An update merges its fields over the record's and joins its transactions."""
        await backend.cache.write("t1", [create("r1", a=1, b=2)], 60.0)
        await backend.cache.write("t2", [update("r1", b=3, c=4)], 60.0)
        record = await self.cached(backend, "r1")
        assert dict(record.fields) == {"a": 1, "b": 3, "c": 4}
        assert (record.created, record.deleted) == (True, False)
        assert record.transaction_ids == ("t1", "t2")
        assert await backend.cache.created_by(OBS, "r1") == "t1"

    async def test_cache_update_without_create(self, backend: Backend) -> None:
        """An update of a record not created here caches just its fields."""
        await backend.cache.write("t1", [update("r1", b=3)], 60.0)
        record = await self.cached(backend, "r1")
        assert dict(record.fields) == {"b": 3}
        assert (record.created, record.deleted, record.transaction_ids) == (False, False, ("t1",))
        assert await backend.cache.created_by(OBS, "r1") is None

    async def test_cache_delete_marks_deleted(self, backend: Backend) -> None:
        """A delete marks the record deleted."""
        await backend.cache.write("t1", [create("r1", a=1)], 60.0)
        await backend.cache.write("t2", [delete("r1")], 60.0)
        record = await self.cached(backend, "r1")
        assert record.deleted is True
        assert record.transaction_ids == ("t1", "t2")
        await backend.cache.write("t3", [delete("r2")], 60.0)
        assert (await self.cached(backend, "r2")).deleted is True

    async def test_cache_writes_apply_in_step_order(self, backend: Backend) -> None:
        """Writes of one transaction apply in order; the transaction is named once."""
        writes = [create("r1", a=1, b=1), update("r1", a=2), update("r1", c=3)]
        await backend.cache.write("t1", writes, 60.0)
        record = await self.cached(backend, "r1")
        assert dict(record.fields) == {"a": 2, "b": 1, "c": 3}
        assert record.transaction_ids == ("t1",)

    async def test_cache_list_per_model_in_order_first_written(self, backend: Backend) -> None:
        """``list`` holds one model's records, in the order first written."""
        await backend.cache.write("t1", [create("r2"), create("i1", INSTRUMENT)], 60.0)
        await backend.cache.write("t2", [update("r1", a=1)], 60.0)
        await backend.cache.write("t3", [update("r2", a=2)], 60.0)
        assert await self.listed(backend) == ["r2", "r1"]
        assert await self.listed(backend, INSTRUMENT) == ["i1"]
        assert await backend.cache.list("Unknown") == []
        (record, _) = await backend.cache.list(OBS)
        got = await backend.cache.get(OBS, "r2")
        assert got is not None
        self.assert_time(record.expires_at, got.expires_at, "expiry seen by list and get")
        assert replace(record, expires_at=0) == replace(got, expires_at=0)

    async def test_cache_record_expires_after_ttl(self, backend: Backend) -> None:
        """A record not extended is gone after ``ttl_seconds``, from every view."""
        await backend.cache.write("t1", [create("r1", a=1)], 2 * self.tick)
        await self.advance(self.tick)
        assert await backend.cache.get(OBS, "r1") is not None
        await self.advance(self.tick)

        async def gone() -> bool:
            return await backend.cache.get(OBS, "r1") is None

        await self.eventually(gone, "a record with a 2-tick TTL is gone after 2 ticks")
        assert await backend.cache.list(OBS) == []
        assert await backend.cache.created_by(OBS, "r1") is None

    async def test_cache_write_never_shortens_expiry(self, backend: Backend) -> None:
        """A later write with a shorter TTL leaves the longer expiry."""
        await backend.cache.write("t1", [create("r1", a=1)], 3 * self.tick)
        expires_at = (await self.cached(backend, "r1")).expires_at
        await backend.cache.write("t2", [update("r1", b=2)], self.tick)
        self.assert_time((await self.cached(backend, "r1")).expires_at, expires_at, "expiry")
        await self.advance(1.5 * self.tick)
        assert await backend.cache.get(OBS, "r1") is not None
        assert await backend.cache.created_by(OBS, "r1") == "t1"

    async def test_cache_create_over_a_record_never_shortens_expiry(self, backend: Backend) -> None:
        """A create that replaces a record's fields keeps the record's longer expiry."""
        await backend.cache.write("t1", [create("r1", a=1)], 3 * self.tick)
        expires_at = (await self.cached(backend, "r1")).expires_at
        await backend.cache.write("t2", [create("r1", b=2)], self.tick)
        record = await self.cached(backend, "r1")
        self.assert_time(record.expires_at, expires_at, "expiry")
        assert dict(record.fields) == {"b": 2}

    async def test_cache_extend_pushes_expiry(self, backend: Backend) -> None:
        """``extend`` moves the expiry of the record and the ID cache to ``ttl`` from now."""
        await backend.cache.write("t1", [create("r1", a=1)], 2 * self.tick)
        await self.advance(self.tick)
        assert await backend.cache.extend(["t1"], 2 * self.tick) >= 1
        self.assert_time(
            (await self.cached(backend, "r1")).expires_at, self.now() + 2 * self.tick, "expiry"
        )
        await self.advance(1.5 * self.tick)
        assert await backend.cache.get(OBS, "r1") is not None
        assert await backend.cache.created_by(OBS, "r1") == "t1"
        await self.advance(self.tick / 2)

        async def gone() -> bool:
            return await backend.cache.get(OBS, "r1") is None

        await self.eventually(gone, "the extended record is gone 2 ticks after the extension")

    async def test_cache_extend_never_shortens(self, backend: Backend) -> None:
        """Extending by less than the time left changes nothing."""
        await backend.cache.write("t1", [create("r1", a=1)], 60.0)
        expires_at = (await self.cached(backend, "r1")).expires_at
        await backend.cache.extend(["t1"], 1.0)
        self.assert_time((await self.cached(backend, "r1")).expires_at, expires_at, "expiry")

    async def test_cache_extend_counts_entries(self, backend: Backend) -> None:
        """``extend`` counts the entries the transactions wrote, none for unknown ones."""
        await backend.cache.write("t1", [update("r1", a=1), update("r2", a=2)], 60.0)
        await backend.cache.write("t2", [update("r2", b=1)], 60.0)
        assert await backend.cache.extend(["t1"], 120.0) == 2
        assert await backend.cache.extend(["t2"], 120.0) == 1
        assert await backend.cache.extend(["unknown"], 120.0) == 0
        assert await backend.cache.extend([], 120.0) == 0

    async def test_cache_release_keeps_records_of_unreleased_transactions(
        self, backend: Backend
    ) -> None:
        """Release drops what only the released wrote; shared records stay with the others."""
        await backend.cache.write("t1", [create("r1", a=1), create("r2", a=2)], 60.0)
        await backend.cache.write("t2", [update("r2", b=3)], 60.0)
        assert await backend.cache.release(["t1"]) >= 1
        assert await backend.cache.get(OBS, "r1") is None
        assert await backend.cache.created_by(OBS, "r1") is None
        assert await self.listed(backend) == ["r2"]
        record = await self.cached(backend, "r2")
        assert record.transaction_ids == ("t2",)
        assert dict(record.fields) == {"a": 2, "b": 3}
        assert await backend.cache.extend(["t2"], 60.0) == 1
        assert await backend.cache.release(["t2"]) >= 1
        assert await backend.cache.list(OBS) == []
        assert await backend.cache.get(OBS, "r2") is None

    async def test_cache_release_counts_entries(self, backend: Backend) -> None:
        """``release`` counts the entries it deleted, none for unknown transactions."""
        await backend.cache.write("t1", [update("r1", a=1), update("r2", a=2)], 60.0)
        await backend.cache.write("t2", [update("r2", b=1)], 60.0)
        assert await backend.cache.release(["unknown"]) == 0
        assert await backend.cache.release(["t1"]) == 1
        assert await backend.cache.release(["t1"]) == 0
        assert await backend.cache.release(["t2"]) == 1
        assert await backend.cache.list(OBS) == []

    async def test_cache_release_of_several_transactions(self, backend: Backend) -> None:
        """Releasing every writer of a record at once drops it."""
        await backend.cache.write("t1", [create("r1", a=1)], 60.0)
        await backend.cache.write("t2", [update("r1", b=1)], 60.0)
        await backend.cache.release(["t1", "t2"])
        assert await backend.cache.get(OBS, "r1") is None
        assert await backend.cache.list(OBS) == []
        assert await backend.cache.created_by(OBS, "r1") is None
