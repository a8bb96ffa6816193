"""Issue #19 for bulk steps: a bulk update's rows carry bases, a bulk create's keys are checked."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from writers import Note, Parties, Versioned, parties

from ccat_buffering import TransactionBuilder
from ccat_buffering.errors import ConflictError
from ccat_buffering.models import TransactionState


async def _notes(p: Parties, n: int, **values: Any) -> list[uuid.UUID]:
    """Rows everyone has seen: created at the main site."""
    keys = [uuid.uuid4() for _ in range(n)]
    await p.write(
        p.main, lambda tx: tx.bulk_create(Note, [{"id": k, "title": "n", **values} for k in keys])
    )
    return keys


async def _conflicted(p: Parties, site: Any, tx_id: str) -> None:
    status = await site.status(tx_id)
    assert status is not None and status.state is TransactionState.CONFLICTED
    assert status.attempts == 0  # found at the first attempt, never retried
    assert not await site.backend.dead_letters.list()
    assert (await site.backend.buffer.stats()).depth == 0  # the queue moved on


async def test_a_bulk_update_row_that_moved_is_a_conflict(main_url: str) -> None:
    async with parties(main_url) as p:
        first, second = await _notes(p, 2, status="new")
        # The site's own view gives each row its base at submit, in one read.
        reads = p.a.reads.calls
        a = await p.write(
            p.a,
            lambda tx: tx.bulk_update(
                Note, [{"id": first, "status": "a"}, {"id": second, "status": "a"}]
            ),
        )
        assert p.a.reads.calls == reads + 1
        await p.write(p.main, lambda tx: tx.update(Note, second, {"status": "main"}))
        await p.drain(p.a)
        assert [(await p.row(Note, k)).status for k in (first, second)] == ["new", "main"]
        [record] = await p.conflicts()
        assert record.transaction_id == a.transaction_id
        assert record.conflict.kind == "update_origin_differs"
        assert dict(record.conflict.key) == {"id": second}
        assert record.conflict.base == {"status": "new"}
        assert record.conflict.theirs == {"status": "main"}
        await _conflicted(p, p.a, a.transaction_id)


@pytest.mark.parametrize("policy", ["overwrite", "newer_wins"])
async def test_a_bulk_update_is_decided_row_by_row(main_url: str, policy: str) -> None:
    async with parties(
        main_url, conflict_policies={"Note": policy}, conflict_write_time={"Note": "written_at"}
    ) as p:
        first, second = await _notes(p, 2, status="new")
        await p.write(p.a, lambda tx: tx.bulk_update(Note, [{"id": second, "status": "a"}]))
        await p.write(p.main, lambda tx: tx.update(Note, second, {"status": "main"}))  # newer
        await p.write(
            p.b,
            lambda tx: tx.bulk_update(
                Note, [{"id": first, "status": "b"}, {"id": second, "status": "b"}]
            ),
        )  # newest
        await p.drain(p.a)
        await p.drain(p.b)
        assert [(await p.row(Note, k)).status for k in (first, second)] == ["b", "b"]
        log = await p.conflicts()
        # B saw main's write at submit; A's older write overwrites it, or loses to it.
        wanted = ["applied", "applied"] if policy == "overwrite" else ["kept_theirs"]
        assert [str(r.conflict.outcome) for r in log] == wanted
        assert all(dict(r.conflict.key) == {"id": second} for r in log)


async def test_bulk_update_bases_stated_and_versions_through_the_main_site(main_url: str) -> None:
    async with parties(main_url) as p:
        keys = [uuid.uuid4(), uuid.uuid4()]
        await p.write(
            p.main, lambda tx: tx.bulk_create(Versioned, [{"id": k, "name": "v"} for k in keys])
        )
        # The main site's own base: read from the main database; versions bumped.
        await p.write(
            p.main, lambda tx: tx.bulk_update(Versioned, [{"id": k, "name": "m"} for k in keys])
        )
        assert [(await p.row(Versioned, k)).version for k in keys] == [2, 2]
        # A stale stated base (the version a writer saw) on one row: nothing is written.
        with pytest.raises(ConflictError, match="update_origin_differs"):
            await p.write(
                p.main,
                lambda tx: tx.bulk_update(
                    Versioned,
                    [{"id": k, "name": "x"} for k in keys],
                    expected_version=[2, 1],
                ),
            )
        rows = [await p.row(Versioned, k) for k in keys]
        assert [(r.name, r.version) for r in rows] == [("m", 2), ("m", 2)]
        [record] = await p.conflicts()
        assert dict(record.conflict.key) == {"id": keys[1]}
        assert record.conflict.base == {"version": 1}
        # A stated value base that holds applies; the version it did not state
        # comes from the view, checked and bumped as the ORM's would be.
        await p.write(
            p.main,
            lambda tx: tx.bulk_update(
                Versioned, [{"id": keys[0], "name": "y"}], expected=[{"name": "m"}]
            ),
        )
        assert (await p.row(Versioned, keys[0])).version == 3
        await p.write(
            p.main, lambda tx: tx.update(Versioned, keys[1], {"name": "z"}, expected={"name": "m"})
        )
        assert (await p.row(Versioned, keys[1])).version == 3


def test_a_bulk_update_base_survives_the_wire() -> None:
    tx = TransactionBuilder("edit")
    tx.bulk_update(
        "Note",
        [{"id": 1, "status": "a"}, {"id": 2, "status": "b"}],
        expected=[{"status": "new"}, {}],
        expected_version=[None, 4],
    )
    built = tx.build()
    again = type(built).from_json(built.to_json())
    assert again.steps[0].expected_records == [{"status": "new"}, {}]
    assert again.steps[0].expected_versions == [None, 4]
    assert again.format_version == 2
    with pytest.raises(Exception, match="one per record"):
        TransactionBuilder("edit").bulk_update("Note", [{"id": 1}], expected=[{}, {}])


@pytest.mark.parametrize("policy", ["reject", "overwrite"])
async def test_the_same_natural_key_bulk_created_at_two_sites(main_url: str, policy: str) -> None:
    async with parties(main_url, conflict_policies={"Note": policy}) as p:
        mine, theirs, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        await p.write(
            p.a, lambda tx: tx.bulk_create(Note, [{"id": theirs, "title": "a", "code": "X-1"}])
        )
        b = await p.write(
            p.b,
            lambda tx: tx.bulk_create(
                Note,
                [
                    {"id": other, "title": "b", "code": "X-2"},
                    {"id": mine, "title": "b", "code": "X-1"},
                ],
            ),
        )
        later = uuid.uuid4()
        await p.write(p.b, lambda tx: tx.create(Note, {"id": later, "title": "later"}))
        await p.drain(p.a)
        await p.drain(p.b)
        [record] = await p.conflicts()
        assert record.transaction_id == b.transaction_id
        assert record.conflict.kind == "insert_exists"
        assert record.conflict.outcome == "rejected"  # another key on the same natural key
        assert dict(record.conflict.key) == {"code": "X-1"}
        assert (await p.row(Note, theirs)).title == "a"
        assert await p.row(Note, mine) is None and await p.row(Note, other) is None
        assert (await p.row(Note, later)).title == "later"  # not held behind it
        await _conflicted(p, p.b, b.transaction_id)


async def test_a_bulk_create_that_meets_equal_rows_is_skipped(main_url: str) -> None:
    async with parties(main_url) as p:
        keys = [uuid.uuid4(), uuid.uuid4()]
        await p.write(p.a, lambda tx: tx.create(Note, {"id": keys[0], "title": "same"}))
        await p.write(
            p.b, lambda tx: tx.bulk_create(Note, [{"id": k, "title": "same"} for k in keys])
        )
        await p.drain(p.a)
        await p.drain(p.b)
        [record] = await p.conflicts()
        assert record.conflict.outcome == "skipped_equal" and not record.unresolved
        assert (await p.row(Note, keys[1])).title == "same"
