"""The contract of the bounded lookups of :class:`~ccat_buffering.buffer.protocols.CacheStore`.

``get_many`` and ``find`` are what reads use so that their cost follows what
they return, not what is buffered.
"""

from __future__ import annotations

from typing import Any

from ccat_buffering.buffer.protocols import Backend, CacheKind, CacheWrite
from ccat_buffering.testing._base import ContractHooks

__all__ = ["CacheLookupContract"]

OBS = "Observation"
FILE = "RawDataFile"


def _write(kind: CacheKind, record_id: str, model: str = FILE, **fields: Any) -> CacheWrite:
    return CacheWrite(model, record_id, kind, fields)


class CacheLookupContract(ContractHooks):
    """``get_many`` and ``find``: records by id, and by field value through an index."""

    @staticmethod
    async def found(backend: Backend, model: str = FILE, **equals: Any) -> list[str]:
        """The ids ``find`` returns, in order."""
        return [r.record_id for r in await backend.cache.find(model, equals)]

    async def test_get_many_in_the_order_asked(self, backend: Backend) -> None:
        """``get_many`` answers in the order of the ids, ``None`` for records not cached."""
        writes = [_write(CacheKind.CREATE, f"f{i}", n=i) for i in range(3)]
        await backend.cache.write("t1", writes, 60.0)
        records = await backend.cache.get_many(FILE, ["f2", "nope", "f0", "f2"])
        assert [r and (r.record_id, dict(r.fields)) for r in records] == [
            ("f2", {"n": 2}),
            None,
            ("f0", {"n": 0}),
            ("f2", {"n": 2}),
        ]
        assert await backend.cache.get_many(FILE, []) == []
        assert await backend.cache.get_many(OBS, ["f0"]) == [None]

    async def test_get_many_skips_expired_records(self, backend: Backend) -> None:
        """An expired record is ``None`` in ``get_many``."""
        await backend.cache.write("t1", [_write(CacheKind.CREATE, "f1", n=1)], self.tick)
        await self.advance(self.tick)

        async def gone() -> bool:
            return await backend.cache.get_many(FILE, ["f1"]) == [None]

        await self.eventually(gone, "an expired record is None in get_many")

    async def test_find_by_field_value(self, backend: Backend) -> None:
        """``find`` gives the live records holding a value, in the order first written."""
        await backend.cache.write(
            "t1",
            [
                _write(CacheKind.CREATE, "f3", obs="o1", size=3),
                _write(CacheKind.CREATE, "f1", obs="o2", size=3),
                _write(CacheKind.CREATE, "f2", obs="o1", size=1),
                _write(CacheKind.UPDATE, "f9", obs="o1"),
                _write(CacheKind.CREATE, "x1", OBS, obs="o1"),
            ],
            60.0,
        )
        assert await self.found(backend, obs="o1") == ["f3", "f2", "f9"]
        assert await self.found(backend, obs="o3") == []
        assert await self.found(backend, size=3) == ["f3", "f1"]
        assert await self.found(backend, obs="o2", size=1) == ["f1", "f2"]
        assert await self.found(backend) == []
        assert await self.found(backend, missing=1) == []

    async def test_find_compares_buffered_json_values(self, backend: Backend) -> None:
        """Values compare as their buffered JSON: tagged values, long text, numbers by type."""
        uid = {"$uuid": "8d3c4a53-2f52-4b8e-8f3e-1a2b3c4d5e6f"}
        long_text = "a very long value, " * 20
        await backend.cache.write(
            "t1",
            [
                _write(CacheKind.CREATE, "f1", key=uid, note=long_text, flag=True, n=1),
                _write(CacheKind.CREATE, "f2", key=None, note=long_text + "!", flag=False, n=1.5),
            ],
            60.0,
        )
        assert await self.found(backend, key=uid) == ["f1"]
        assert await self.found(backend, key=None) == ["f2"]
        assert await self.found(backend, note=long_text) == ["f1"]
        assert await self.found(backend, note=long_text + "!") == ["f2"]
        assert await self.found(backend, flag=True) == ["f1"]
        assert await self.found(backend, n=1.5) == ["f2"]

    async def test_find_follows_updates_creates_and_releases(self, backend: Backend) -> None:
        """The index moves with every write and forgets what a release drops."""
        await backend.cache.write(
            "t1", [_write(CacheKind.CREATE, "f1", obs="o1", state="new")], 60.0
        )
        await backend.cache.write("t2", [_write(CacheKind.UPDATE, "f1", state="done")], 60.0)
        assert await self.found(backend, state="new") == []
        assert await self.found(backend, state="done") == ["f1"]
        assert await self.found(backend, obs="o1") == ["f1"]
        await backend.cache.write("t3", [_write(CacheKind.CREATE, "f1", obs="o2")], 60.0)
        assert await self.found(backend, obs="o1") == []
        assert await self.found(backend, state="done") == []
        assert await self.found(backend, obs="o2") == ["f1"]
        await backend.cache.release(["t1", "t2"])
        assert await self.found(backend, obs="o2") == ["f1"]
        await backend.cache.release(["t3"])
        assert await self.found(backend, obs="o2") == []

    async def test_find_skips_expired_records(self, backend: Backend) -> None:
        """An expired record is not found, and a later record of the id only by its own values."""
        await backend.cache.write("t1", [_write(CacheKind.CREATE, "f1", obs="o1")], self.tick)
        await self.advance(self.tick)

        async def gone() -> bool:
            return await self.found(backend, obs="o1") == []

        await self.eventually(gone, "an expired record is not found")
        await backend.cache.write("t2", [_write(CacheKind.CREATE, "f1", obs="o2")], 60.0)
        assert await self.found(backend, obs="o1") == []
        assert await self.found(backend, obs="o2") == ["f1"]
