"""Keys of every shape, and Python-side defaults at write time, on real databases.

Native UUID primary and foreign keys (one made by the column's own default),
a date key, natural text keys with spaces, ``:``, ``@`` and ``,``, and a
composite key of text and an enum: created, updated, bulk-updated, deleted
and read back, before the drain (from the buffer) and after it (from the
database alone), with keys given as a JSON request carries them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from test_type_matrix import database_only, typed_site
from type_cases import KeyBase, Link, Night, Phase, Pointing, Reading, Source, Stamp, Target

from ccat_buffering import BufferingCoordinator, TransactionBuilder
from ccat_buffering.write.models import Transaction, TransactionState

SITES = [
    pytest.param(database, backend, site_type, id=f"{database}-{backend}-{site_type}")
    for database in ("sqlite", "postgresql", "psycopg")
    for backend in ("memory", "redis")
    for site_type in ("secondary", "main")
]


def writes() -> tuple[list[Transaction], dict[str, Any]]:
    """Three transactions over every key shape, keys given mostly as text."""
    first = TransactionBuilder("create")
    target = first.create(Target, {"name": "M31"})
    link_id = uuid.uuid4()
    first.create(Link, {"id": str(link_id), "target_id": target.id})
    first.create(Night, {"day": "2026-12-01", "seeing": "0.85"})
    first.create(Night, {"day": dt.date(2026, 12, 2)})
    spare = first.create(Target, {"name": "spare"})
    first.create(Source, {"name": "NGC 1333", "kind": "running"})
    first.create(Source, {"name": "IRAS16293-2422:A", "kind": "done"})
    first.create(Source, {"name": "jdoe@example.org"})
    first.create(Pointing, {"source": "a,b", "phase": "running", "offset": "0.5"})
    first.create(Reading, {"value": "1.5", "note": "a"})
    first.create(Stamp, {"at": "2026-12-01T10:00:00Z", "note": "a"})
    second = TransactionBuilder("change")
    second.update(Target, target.id, {"name": "M31b"})
    second.update(Night, "2026-12-01", {"seeing": 0.9})
    second.update(Source, "NGC 1333", {"kind": "DONE"})
    second.update(Pointing, {"source": "a,b", "phase": Phase.RUNNING}, {"offset": 1})
    second.bulk_update(Source, [{"name": "IRAS16293-2422:A", "kind": "running"}])
    second.delete(Source, "jdoe@example.org")
    second.update(Reading, "1.50", {"note": "b"})
    second.update(Stamp, "2026-12-01T12:00:00+02:00", {"note": "b"})
    second.delete(Night, "2026-12-02")
    second.delete(Target, spare.id.upper())  # type: ignore[union-attr]
    second.bulk_update(Night, [{"day": "2026-12-01", "seeing": "0.9"}])
    second.bulk_update(Target, [{"id": target.id, "name": "M31b"}])
    third = TransactionBuilder("refer")
    other = third.create(Target, {"name": "M33"})
    third.update(Link, str(link_id).upper(), {"target_id": other.ref("id"), "note": "moved"})
    assert isinstance(target.value, uuid.UUID) and target.id == str(target.value)
    known = {"target": target.value, "other": other.value, "link": link_id, "spare": spare.id}
    return [first.build(), second.build(), third.build()], known


async def seen(site: BufferingCoordinator, reads: Any, known: dict[str, Any]) -> dict[str, Any]:
    return {
        "target": await reads.get(Target, str(known["target"])),
        "link": await reads.get("Link", str(known["link"]).upper()),
        "night": await reads.get(Night, "2026-12-01"),
        "night by date": await reads.get(Night, dt.date(2026, 12, 1)),
        "ngc": await reads.get(Source, "NGC 1333"),
        "iras": await reads.get(Source, "IRAS16293-2422:A"),
        "deleted": await reads.get(Source, "jdoe@example.org"),
        "deleted night": await reads.get(Night, "2026-12-02"),
        "deleted target": await reads.get(Target, known["spare"]),
        "pointing": await reads.get(Pointing, ("a,b", "running")),
        "pointing by mapping": await reads.get(Pointing, {"source": "a,b", "phase": Phase.RUNNING}),
        "running": [r["name"] for r in await reads.list(Source, kind="running")],
        "reading": await reads.get(Reading, Decimal("1.500")),
        "readings": [r["note"] for r in await reads.list(Reading)],
        "stamp": await reads.get(Stamp, "2026-12-01T10:00:00+00:00"),
        "stamps": [r["note"] for r in await reads.list(Stamp)],
        "impossible": await reads.list(Source, kind="no such kind"),
    }


def check(view: dict[str, Any], known: dict[str, Any], *, drained: bool) -> None:
    assert view["target"]["name"] == "M31b"
    assert type(view["target"]["id"]) is uuid.UUID
    assert view["target"]["updated_at"].tzinfo is not None
    # A ref() is known only once the drain has applied it.
    assert view["link"]["target_id"] == known["other" if drained else "target"]
    assert type(view["link"]["target_id"]) is uuid.UUID
    assert view["link"]["note"] == "moved"
    assert view["night"]["seeing"] == Decimal("0.90")
    assert view["night"]["day"] == dt.date(2026, 12, 1)
    assert view["night by date"] == view["night"]
    assert view["ngc"]["kind"] is Phase.DONE
    assert view["iras"]["kind"] is Phase.RUNNING
    assert view["deleted"] is None
    assert view["deleted night"] is None
    assert view["deleted target"] is None
    assert view["pointing"]["offset"] == 1.0
    assert view["pointing"]["phase"] is Phase.RUNNING
    assert view["pointing by mapping"] == view["pointing"]
    assert view["running"] == ["IRAS16293-2422:A"]
    assert view["reading"]["note"] == "b" and view["readings"] == ["b"]
    assert view["stamp"]["note"] == "b" and view["stamps"] == ["b"]
    assert view["stamp"]["at"] == dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)
    assert view["impossible"] == []


@pytest.mark.parametrize(("database", "backend", "site_type"), SITES)
async def test_keys_of_every_shape_from_write_to_replica(
    tmp_path: Path, database: str, backend: str, site_type: str
) -> None:
    async with typed_site(tmp_path, database, backend, site_type, [KeyBase]) as site:
        transactions, known = writes()
        for transaction in transactions:
            await site.submit(transaction)
        if site_type == "secondary":
            before = await seen(site, site.reads, known)
            check(before, known, drained=False)
            assert await site.processor.drain(timeout=30)
        for transaction in transactions:
            status = await site.status(transaction.transaction_id)
            assert status is not None
            assert status.state in (TransactionState.COMMITTED, TransactionState.REPLICATED)
        after = await seen(site, database_only(site), known)
        check(after, known, drained=True)
        if site_type == "secondary":
            for name, record in before.items():
                if isinstance(record, dict):
                    for field, value in record.items():
                        if (name, field) == ("link", "target_id"):
                            continue
                        assert (type(value), value) == (
                            type(after[name][field]),
                            after[name][field],
                        ), f"{name}.{field}: {value!r} before, {after[name][field]!r} after"


async def test_python_defaults_hold_the_moment_of_the_write(tmp_path: Path) -> None:
    async with typed_site(tmp_path, "sqlite", "memory", "secondary", [KeyBase]) as site:
        tx = TransactionBuilder("create")
        written = dt.datetime.now(dt.UTC)
        target = tx.create(Target, {"name": "M31"})
        transaction = tx.build()
        await site.submit(transaction)
        created = (await site.reads.get(Target, target.id))["created_at"]  # type: ignore[index]
        assert abs((created - written).total_seconds()) < 1
        # The drain comes later, as after an outage: by then the clock has moved on.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while dt.datetime.now(dt.UTC) < created + dt.timedelta(seconds=1.2):
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        drained_at = dt.datetime.now(dt.UTC)
        assert await site.processor.drain(timeout=30)
        async with site.engine.connect() as conn:
            stored = (await conn.execute(select(Target.created_at))).scalar_one()
        assert stored.replace(tzinfo=dt.UTC) == created
        assert stored.replace(tzinfo=dt.UTC) < drained_at - dt.timedelta(seconds=1)
