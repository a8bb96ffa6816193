"""Replication tracking against a stand-in replica, and read-your-writes."""

from __future__ import annotations

from pathlib import Path

from ccat_buffering.confirm.replication import (
    ImmediateReplicationChecker,
    ReplicaState,
    ReplicationTracker,
)
from ccat_buffering.demo.example import ExecutedObsUnit
from ccat_buffering.read.reads import Reads
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import TransactionState

from support import Site, memory_sqlite_site, observation


class ScriptedReplica:
    """A replica whose replay position the test sets; counts the polls."""

    def __init__(self) -> None:
        self.replay_lsn: LSN | None = LSN("0/0")
        self.polls = 0

    async def poll(self) -> ReplicaState:
        self.polls += 1
        return ReplicaState(replay_lsn=self.replay_lsn, lag_seconds=0.0)


async def _commit_with_lsns(site: Site, lsns: list[str]) -> list[str]:
    ids = []
    for i, lsn in enumerate(lsns):
        tx, _ = observation(i)
        await site.manager.buffer(tx)
        (delivery,) = await site.manager.claim(1, 30)
        await site.manager.committed([delivery], LSN(lsn))
        ids.append(tx.transaction_id)
    return ids


async def test_confirms_only_what_the_replica_replayed(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        replica = ScriptedReplica()
        tracker = ReplicationTracker(site.manager, replica, clock=site.clock)
        ids = await _commit_with_lsns(site, ["0/9", "0/10", "0/FFFFFFFF", "1/0"])
        replica.replay_lsn = LSN("0/9")
        report = await tracker.poll_once()
        assert (report.confirmed, report.pending) == (1, 3)
        replica.replay_lsn = LSN("0/FFFFFFFF")  # string order would put "0/9" above it
        report = await tracker.poll_once()
        assert (report.confirmed, report.pending) == (2, 1)
        last = await site.manager.status(ids[3])
        assert last is not None and last.state is TransactionState.COMMITTED
        replica.replay_lsn = LSN("1/0")
        report = await tracker.poll_once()
        assert (report.confirmed, report.pending) == (1, 0)
        statuses = await site.backend.status.get_many(ids)
        assert all(s is not None and s.state is TransactionState.REPLICATED for s in statuses)
        assert await site.backend.cache.list("ExecutedObsUnit") == []
        assert replica.polls == 3  # one query per poll, whatever the number pending


async def test_caches_outlive_their_ttl_while_the_replica_is_behind(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        replica = ScriptedReplica()
        tracker = ReplicationTracker(site.manager, replica, clock=site.clock, timeout=30)
        tx, obs_id = observation(1)
        await site.manager.buffer(tx)
        (delivery,) = await site.manager.claim(1, 30)
        await site.manager.committed([delivery], LSN("5/0"))
        ttl = site.manager.cache_ttl
        for _ in range(12):  # four TTLs
            site.clock.advance(ttl / 3)
            report = await tracker.poll_once()
            assert report.pending == 1
            assert await site.manager.cached_record("ExecutedObsUnit", obs_id) is not None
        assert report.lagging
        # The status, too, is kept while unfinished.
        status = await site.manager.status(tx.transaction_id)
        assert status is not None and status.state is TransactionState.COMMITTED
        replica.replay_lsn = LSN("5/0")
        await tracker.poll_once()
        assert await site.manager.cached_record("ExecutedObsUnit", obs_id) is None


async def test_buffered_caches_survive_a_long_outage(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        tracker = ReplicationTracker(site.manager, ImmediateReplicationChecker(), clock=site.clock)
        tx, obs_id = observation(1)
        await site.manager.buffer(tx)
        for _ in range(7 * 24):  # a week, hour by hour
            site.clock.advance(3600 / 3)
            await tracker.poll_once()
        assert await site.manager.cached_record("ExecutedObsUnit", obs_id) is not None


async def test_a_restarted_tracker_carries_on(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        replica = ScriptedReplica()
        ids = await _commit_with_lsns(site, ["0/100", "0/200"])
        first = ReplicationTracker(site.manager, replica, clock=site.clock)
        assert (await first.poll_once()).pending == 2
        replica.replay_lsn = LSN("0/200")
        second = ReplicationTracker(site.manager, replica, clock=site.clock)
        assert (await second.poll_once()).confirmed == 2
        statuses = await site.backend.status.get_many(ids)
        assert all(s is not None and s.state is TransactionState.REPLICATED for s in statuses)


async def test_a_replica_that_is_not_a_standby_confirms_nothing(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        replica = ScriptedReplica()
        replica.replay_lsn = None
        await _commit_with_lsns(site, ["0/1"])
        report = await ReplicationTracker(site.manager, replica, clock=site.clock).poll_once()
        assert (report.confirmed, report.pending) == (0, 1)


async def test_reads_overlay_buffered_records_and_updates(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        reads = Reads(site.backend.cache, site.registry, site.engine)
        # A row already in the database, and one buffered create.
        applied, applied_id = observation(1)
        await site.manager.buffer(applied)
        await site.processor.run_once()
        await ReplicationTracker(site.manager, ImmediateReplicationChecker()).poll_once()
        buffered, buffered_id = observation(2)
        await site.manager.buffer(buffered)
        # Finish both: one update on a replicated row, one on a buffered record.
        for obs_id in (applied_id, buffered_id):
            finish = TransactionBuilder("finish_observation")
            finish.update(ExecutedObsUnit, obs_id, {"status": "finished"})
            await site.manager.buffer(finish.build())
        got = await reads.get("ExecutedObsUnit", buffered_id)
        assert got is not None and got["status"] == "finished" and got["obs_unit_id"] == 2
        seen = await reads.get("ExecutedObsUnit", applied_id)
        assert seen is not None and seen["status"] == "finished" and seen["obs_unit_id"] == 1
        listed = await reads.list("ExecutedObsUnit", status="finished")
        assert sorted(r["obs_unit_id"] for r in listed) == [1, 2]
        assert await reads.list("ExecutedObsUnit", status="running") == []
        # Drain and replicate: the database answers alone, with the same values.
        while await site.processor.run_once():
            pass
        await ReplicationTracker(site.manager, ImmediateReplicationChecker()).poll_once()
        assert await site.backend.cache.list("ExecutedObsUnit") == []
        after = await reads.get("ExecutedObsUnit", buffered_id)
        assert after is not None and after["status"] == "finished"
        assert {k: after[k] for k in ("id", "obs_unit_id", "status")} == {
            k: got[k] for k in ("id", "obs_unit_id", "status")
        }


async def test_merge_dedups_and_hides_buffered_deletes(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        reads = Reads(site.backend.cache, site.registry)
        rows = [
            {"id": "a", "status": "running"},
            {"id": "a", "status": "dup"},
            {"id": "b", "status": "x"},
        ]
        gone = TransactionBuilder("cancel")
        gone.delete(ExecutedObsUnit, "b")
        await site.manager.buffer(gone.build())
        created, created_id = observation(3)
        await site.manager.buffer(created)
        merged = await reads.merge("ExecutedObsUnit", rows)
        assert [r["id"] for r in merged] == ["a", created_id]
        assert merged[0]["status"] == "running"


async def test_a_large_backlog_is_confirmed_a_slice_per_poll(tmp_path: Path) -> None:
    async with memory_sqlite_site(tmp_path) as site:
        replica = ScriptedReplica()
        tracker = ReplicationTracker(site.manager, replica, clock=site.clock)
        tracker.slice = 2
        await _commit_with_lsns(site, ["0/1", "0/2", "0/3", "0/4", "0/5"])
        report = await tracker.poll_once()
        assert (report.confirmed, report.pending) == (0, 5)  # all counted, two looked at
        replica.replay_lsn = LSN("0/5")
        confirmed = []
        for _ in range(3):
            confirmed.append((await tracker.poll_once()).confirmed)
        assert confirmed == [2, 2, 1]
        assert (await tracker.poll_once()).pending == 0
