"""Issue #19: several writers, one truth — every case, each policy, both drain orders."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from services import require_redis
from writers import REDIS, Note, Parties, Versioned, parties

from ccat_buffering.errors import ConflictError
from ccat_buffering.write.models import TransactionState


async def _note(p: Parties, **values: Any) -> uuid.UUID:
    """A row everyone has seen: created at the main site."""
    key = uuid.uuid4()
    await p.write(p.main, lambda tx: tx.create(Note, {"id": key, "title": "n", **values}))
    return key


@pytest.mark.parametrize("backend", ["memory", "redis"])
@pytest.mark.parametrize("b_first", [True, False], ids=["b-drains-first", "a-drains-first"])
async def test_same_field_three_parties_under_reject(
    main_url: str, b_first: bool, backend: str
) -> None:
    if backend == "redis":
        await require_redis()
    async with parties(main_url, backend=REDIS if backend == "redis" else "memory://") as p:
        key = await _note(p, status="new")
        a = await p.write(p.a, lambda tx: tx.update(Note, key, {"status": "a"}))
        b = await p.write(p.b, lambda tx: tx.update(Note, key, {"status": "b"}))
        await p.write(p.main, lambda tx: tx.update(Note, key, {"status": "main"}))
        for site in (p.b, p.a) if b_first else (p.a, p.b):
            await p.drain(site)
        assert (await p.row(Note, key)).status == "main"  # nobody silently overwrote it
        log = await p.conflicts()
        assert sorted((c.transaction_id, str(c.conflict.kind)) for c in log) == sorted(
            [
                (a.transaction_id, "update_origin_differs"),
                (b.transaction_id, "update_origin_differs"),
            ]
        )
        for record in log:
            assert record.unresolved and record.conflict.theirs == {"status": "main"}
            assert record.conflict.base == {"status": "new"}
        mine = {r.site: r.conflict.mine["status"] for r in log}
        assert mine == {p.a.settings.site_name: "a", p.b.settings.site_name: "b"}
        for site, status in ((p.a, a), (p.b, b)):
            now = await site.status(status.transaction_id)
            assert now is not None and now.state is TransactionState.CONFLICTED
            assert "theirs 'main'" in (now.last_error or "")
            # The site's reads show the truth, not the rejected write.
            assert (await site.reads.get(Note, key))["status"] == "main"
            assert (await site.backend.buffer.stats()).depth == 0


async def test_a_main_site_edit_on_a_moved_row_raises_and_is_logged(main_url: str) -> None:
    async with parties(main_url) as p:
        key = await _note(p, status="new")
        await p.write(p.a, lambda tx: tx.update(Note, key, {"status": "a"}))
        await p.drain(p.a)
        # The main site's own base is stale: it states what it saw.
        with pytest.raises(ConflictError, match="update_origin_differs"):
            await p.write(
                p.main, lambda tx: tx.update(Note, key, {"status": "m"}, expected={"status": "new"})
            )
        assert (await p.row(Note, key)).status == "a"
        [record] = await p.conflicts()
        assert record.site == p.main.settings.site_name and record.unresolved


@pytest.mark.parametrize("update_first", [True, False], ids=["update-first", "delete-first"])
async def test_delete_against_update_is_a_conflict_either_way(
    main_url: str, update_first: bool
) -> None:
    async with parties(main_url) as p:
        key = await _note(p, status="new")
        upd = await p.write(p.a, lambda tx: tx.update(Note, key, {"status": "a"}))
        dele = await p.write(p.b, lambda tx: tx.delete(Note, key))
        for site in (p.a, p.b) if update_first else (p.b, p.a):
            await p.drain(site)
        [record] = await p.conflicts()
        if update_first:
            # The delete was made against status 'new': the row moved since.
            assert (await p.row(Note, key)).status == "a"
            assert record.transaction_id == dele.transaction_id
            assert record.conflict.kind == "delete_origin_differs"
            assert record.conflict.theirs["status"] == "a"
        else:
            assert await p.row(Note, key) is None
            assert record.transaction_id == upd.transaction_id
            assert record.conflict.kind == "update_missing"
        assert record.unresolved
        assert not await p.a.backend.dead_letters.list()
        assert not await p.b.backend.dead_letters.list()


async def test_an_update_of_a_row_another_site_created_offline(main_url: str) -> None:
    async with parties(main_url) as p:
        key = uuid.uuid4()
        await p.write(p.a, lambda tx: tx.create(Note, {"id": key, "title": "from a"}))
        # Site B has not seen the row: it states its base itself.
        upd = await p.write(
            p.b, lambda tx: tx.update(Note, key, {"status": "b"}, expected={"status": None})
        )
        await p.drain(p.b)  # before the create: update_missing, waiting, not dead-lettered
        [record] = await p.conflicts()
        assert (
            record.conflict.kind == "update_missing" and record.transaction_id == upd.transaction_id
        )
        assert not await p.b.backend.dead_letters.list()
        await p.drain(p.a)
        assert (await p.row(Note, key)).title == "from a"


@pytest.mark.parametrize("policy", ["reject", "overwrite"])
async def test_the_same_natural_key_created_at_two_sites(main_url: str, policy: str) -> None:
    async with parties(main_url, conflict_policies={"Note": policy}) as p:
        first, second = uuid.uuid4(), uuid.uuid4()
        await p.write(p.a, lambda tx: tx.create(Note, {"id": first, "title": "a", "code": "X-1"}))
        b = await p.write(
            p.b, lambda tx: tx.create(Note, {"id": second, "title": "b", "code": "X-1"})
        )
        await p.drain(p.a)
        await p.drain(p.b)  # never retried as if it could heal, never dead-lettered
        [record] = await p.conflicts()
        assert record.conflict.kind == "insert_exists" and record.transaction_id == b.transaction_id
        # A create with another key on the same natural key is never merged into that row.
        assert record.conflict.outcome == "rejected"
        assert (await p.row(Note, first)).title == "a"
        assert await p.row(Note, second) is None
        status = await p.b.status(b.transaction_id)
        assert status is not None and status.state is TransactionState.CONFLICTED
        assert status.attempts == 0


async def test_a_create_that_meets_an_equal_row_is_skipped_and_recorded(main_url: str) -> None:
    async with parties(main_url) as p:
        key = uuid.uuid4()
        for site in (p.a, p.b):
            await p.write(site, lambda tx: tx.create(Note, {"id": key, "title": "same"}))
        await p.drain(p.a)
        await p.drain(p.b)
        [record] = await p.conflicts()
        assert record.conflict.outcome == "skipped_equal" and not record.unresolved


@pytest.mark.parametrize("b_first", [True, False], ids=["b-first", "a-first"])
async def test_json_merge_keeps_disjoint_keys(main_url: str, b_first: bool) -> None:
    async with parties(main_url, conflict_policies={"Note.meta": "merge"}) as p:
        key = await _note(p, meta={"object": "m31"})
        await p.write(p.a, lambda tx: tx.update(Note, key, {"meta": {"object": "m31", "tau": 0.1}}))
        await p.write(
            p.b, lambda tx: tx.update(Note, key, {"meta": {"object": "m31", "seeing": 0.7}})
        )
        for site in (p.b, p.a) if b_first else (p.a, p.b):
            await p.drain(site)
        assert (await p.row(Note, key)).meta == {"object": "m31", "tau": 0.1, "seeing": 0.7}
        [record] = await p.conflicts()
        assert record.conflict.outcome == "merged" and not record.unresolved


async def test_json_merge_does_not_cover_another_column(main_url: str) -> None:
    async with parties(main_url, conflict_policies={"Note": "merge"}) as p:
        key = await _note(p, status="new")
        await p.write(p.a, lambda tx: tx.update(Note, key, {"status": "a"}))
        await p.write(p.b, lambda tx: tx.update(Note, key, {"status": "b"}))
        await p.drain(p.a)
        await p.drain(p.b)
        assert (await p.row(Note, key)).status == "a"
        [record] = await p.conflicts()
        assert record.conflict.outcome == "rejected"


@pytest.mark.parametrize("b_first", [True, False], ids=["b-first", "a-first"])
async def test_overwrite_applies_and_still_records(main_url: str, b_first: bool) -> None:
    async with parties(main_url, conflict_policies={"Note": "overwrite"}) as p:
        key = await _note(p, status="new")
        await p.write(p.a, lambda tx: tx.update(Note, key, {"status": "a"}))
        await p.write(p.b, lambda tx: tx.update(Note, key, {"status": "b"}))
        order = (p.b, p.a) if b_first else (p.a, p.b)
        for site in order:
            await p.drain(site)
        last = "a" if b_first else "b"
        assert (await p.row(Note, key)).status == last
        [record] = await p.conflicts()
        assert record.conflict.outcome == "applied" and record.conflict.mine["status"] == last


@pytest.mark.parametrize("b_first", [True, False], ids=["b-first", "a-first"])
async def test_newer_wins_by_the_write_time_the_library_fills(main_url: str, b_first: bool) -> None:
    async with parties(
        main_url,
        conflict_policies={"Note": "newer_wins"},
        conflict_write_time={"Note": "written_at"},
    ) as p:
        key = await _note(p, status="new")
        await p.write(p.a, lambda tx: tx.update(Note, key, {"status": "a"}))  # older
        await p.write(p.b, lambda tx: tx.update(Note, key, {"status": "b"}))  # newer
        for site in (p.b, p.a) if b_first else (p.a, p.b):
            await p.drain(site)
        row = await p.row(Note, key)
        assert row.status == "b"  # whatever the drain order
        [record] = await p.conflicts()
        assert record.conflict.outcome == ("kept_theirs" if b_first else "applied")


async def test_version_id_col_creates_updates_deletes_and_conflicts(main_url: str) -> None:
    async with parties(main_url) as p:
        key = uuid.uuid4()
        await p.write(p.main, lambda tx: tx.create(Versioned, {"id": key, "name": "v"}))
        assert (await p.row(Versioned, key)).version == 1
        await p.write(p.a, lambda tx: tx.update(Versioned, key, {"name": "a"}))
        await p.write(p.b, lambda tx: tx.update(Versioned, key, {"name": "b"}))
        await p.write(p.main, lambda tx: tx.update(Versioned, key, {"name": "m"}))
        assert (await p.row(Versioned, key)).version == 2
        await p.drain(p.a)
        await p.drain(p.b)
        row = await p.row(Versioned, key)
        assert (row.name, row.version) == ("m", 2)
        log = await p.conflicts()
        assert [r.conflict.kind for r in log] == ["update_origin_differs"] * 2
        assert all(
            r.conflict.base["version"] == 1 and r.conflict.theirs["version"] == 2 for r in log
        )
        # Later writes of a site to this row wait behind its conflict: drop both.
        for record in log:
            site = p.a if record.site == p.a.settings.site_name else p.b
            await site.resolve_conflict(record.id, "theirs")
        # A writer that saw version 2 updates and deletes.
        await p.write(p.a, lambda tx: tx.update(Versioned, key, {"name": "a2"}))
        await p.drain(p.a)
        assert (await p.row(Versioned, key)).version == 3
        await p.write(p.b, lambda tx: tx.delete(Versioned, key, expected_version=2))
        await p.drain(p.b)
        assert (await p.row(Versioned, key)) is not None
        [stale] = [r for r in await p.conflicts() if r.unresolved]
        assert stale.conflict.kind == "delete_origin_differs"
        await p.b.resolve_conflict(stale.id, "theirs")
        await p.write(p.b, lambda tx: tx.delete(Versioned, key))
        await p.drain(p.b)
        assert (await p.row(Versioned, key)) is None


@pytest.mark.parametrize("backend", ["memory", "redis"])
@pytest.mark.parametrize("keep", ["mine", "theirs"])
async def test_dependents_wait_and_are_released_in_order_on_resolve(
    main_url: str, keep: str, backend: str
) -> None:
    if backend == "redis":
        await require_redis()
    async with parties(main_url, backend=REDIS if backend == "redis" else "memory://") as p:
        key = await _note(p, status="new", title="t0")
        first = await p.write(p.a, lambda tx: tx.update(Note, key, {"status": "a"}))
        second = await p.write(p.a, lambda tx: tx.update(Note, key, {"title": "t1"}))
        other = uuid.uuid4()
        free = await p.write(p.a, lambda tx: tx.create(Note, {"id": other, "title": "free"}))
        await p.write(p.main, lambda tx: tx.update(Note, key, {"status": "main"}))
        await p.drain(p.a)  # the queue moves on: nothing holds the site
        assert (await p.row(Note, other)).title == "free"
        states = {
            s.transaction_id: s.state
            for s in [await p.a.status(t.transaction_id) for t in (first, second, free)]
            if s is not None
        }
        assert states[first.transaction_id] is TransactionState.CONFLICTED
        assert states[second.transaction_id] is TransactionState.CONFLICTED  # waits with it
        assert states[free.transaction_id] in (
            TransactionState.COMMITTED,
            TransactionState.REPLICATED,
        )
        log = {r.transaction_id: r for r in await p.conflicts()}
        assert log[second.transaction_id].conflict.outcome == "waiting"
        assert log[second.transaction_id].conflict.theirs == {"waits_for": first.transaction_id}
        row = await p.row(Note, key)
        assert (row.status, row.title) == ("main", "t0")  # the dependent was not applied
        resolution = await p.a.resolve_conflict(log[first.transaction_id].id, keep)  # type: ignore[arg-type]
        assert resolution.released == [(second.transaction_id, "applied")]
        row = await p.row(Note, key)
        assert (row.status, row.title) == ("a" if keep == "mine" else "main", "t1")
        assert not [r for r in await p.conflicts() if r.unresolved]
        after = await p.a.status(first.transaction_id)
        assert after is not None
        assert after.state is (
            TransactionState.COMMITTED if keep == "mine" else TransactionState.FAILED
        )
        released = await p.a.status(second.transaction_id)
        assert released is not None and released.state is TransactionState.COMMITTED
