"""Telling a loss from a change that lost nothing, from two looks at the buffer."""

from __future__ import annotations

from pathlib import Path

from ccat_buffering._buffer_looks import take_look
from ccat_buffering._sightings import (
    BufferOrigin,
    Sighting,
    SightingFile,
    SightingState,
    judge,
    new_epoch_after,
)

OLD, NEW = "a" * 40, "b" * 40


def seen(seq: int, offset: int, history: str = OLD, epoch: str = "e1 1") -> Sighting:
    return Sighting(
        epoch, seq, held=seq, seen_at="2026-12-07T00:00:00+00:00", history=history, offset=offset
    )


def test_the_same_buffer_moving_on_is_no_loss() -> None:
    assert judge(seen(10, 100), [], BufferOrigin("e1 1", 12, OLD, 130)) is None


def test_a_lost_marker_is_a_loss_of_everything_held_and_after() -> None:
    found = judge(seen(10, 100), [], BufferOrigin(None, 0, NEW, 0))
    assert found is not None and "marker is gone" in found.cause
    assert found.seen_seq == 10 and found.found_seq is None and found.open_ended


def test_another_marker_is_a_loss_unless_it_names_the_one_it_follows() -> None:
    found = judge(seen(10, 100), [], BufferOrigin("e2 2", 3, OLD, 100))
    assert found is not None and "another marker" in found.cause
    after = new_epoch_after("e1 1", "e3 3")
    assert judge(seen(10, 100), [], BufferOrigin(after, 3, OLD, 100)) is None


def test_a_counter_that_went_back_on_one_history_is_a_loss_of_that_range() -> None:
    found = judge(seen(10, 100), [], BufferOrigin("e1 1", 7, OLD, 100))
    assert found is not None and (found.found_seq, found.seen_seq) == (7, 10)


def test_a_failover_to_a_replica_holding_everything_seen_is_no_loss() -> None:
    # The new master holds the old history up to offset 150: past the last sighting (100).
    # Its counter is lower than the old master's was later: two masters' counters, not a loss.
    origin = BufferOrigin("e1 1", 11, NEW, 10, previous_history=OLD, fork_offset=150)
    assert judge(seen(10, 100), [], origin) is None


def test_a_failover_to_a_replica_that_was_behind_names_the_range_past_the_fork() -> None:
    history = [seen(4, 40), seen(6, 60), seen(8, 90)]
    origin = BufferOrigin("e1 1", 7, NEW, 10, previous_history=OLD, fork_offset=61)
    found = judge(seen(10, 100), history, origin)
    assert found is not None and "behind" in found.cause
    # Sightings at offsets below the fork are held by the new master: the loss starts after 6.
    assert (found.found_seq, found.seen_seq, found.open_ended) == (6, 10, True)
    replicated = BufferOrigin(
        "e1 1", 7, NEW, 10, previous_history=OLD, fork_offset=61, replicated=True
    )
    # Even with min_replicas: the new master is not the replica that acknowledged the
    # sighting, so what that one acknowledged later may be gone too.
    still = judge(seen(10, 100), history, replicated)
    assert still is not None and still.open_ended


def test_a_restart_that_changed_the_history_falls_back_to_the_counter() -> None:
    assert judge(seen(10, 100), [], BufferOrigin("e1 1", 10, NEW, 0)) is None
    found = judge(seen(10, 100), [], BufferOrigin("e1 1", 9, NEW, 0))
    assert found is not None and found.found_seq == 9


def test_the_file_keeps_what_it_was_given(tmp_path: Path) -> None:
    sightings = SightingFile(tmp_path / "state", "site-a")
    assert not sightings.read().exists
    with sightings.locked() as state:
        state.last = seen(3, 30)
        state.history.append(seen(2, 20))
        state.superseded[OLD] = 25
        state.losses.append({"cause": "x"})
    again = sightings.read()
    assert again.exists and again.last == seen(3, 30) and again.history == [seen(2, 20)]
    assert again.superseded == {OLD: 25} and again.losses == [{"cause": "x"}]


def look(seq: int, offset: int, history: str = OLD) -> Sighting:
    return Sighting(
        "e1 1", seq, held=1, seen_at="2026-12-07T00:00:00+00:00", history=history, offset=offset
    )


def test_with_min_replicas_a_look_is_kept_only_once_the_replicas_hold_it() -> None:
    state = SightingState()
    # Read at offset 100; the replicas acknowledged 80 so far: it waits.
    take_look(
        state,
        BufferOrigin("e1 1", 10, OLD, 80, replicated=True, own_offset=100),
        look(10, 100),
        ["t1", "t2"],
    )
    assert state.last is None and len(state.pending) == 1
    # The next look shows them at 120: the first is kept, with its transactions.
    take_look(
        state,
        BufferOrigin("e1 1", 12, OLD, 120, replicated=True, own_offset=130),
        look(12, 130),
        ["t1", "t2", "t3"],
    )
    assert state.last is not None and state.last.seq == 10 and state.held_ids == ["t1", "t2"]
    # The master dies before the replica acknowledged 130; it took over at 121: no loss.
    found = take_look(
        state,
        BufferOrigin(
            "e1 1", 11, NEW, 5, previous_history=OLD, fork_offset=121, replicated=True, own_offset=5
        ),
        look(11, 5, NEW),
        ["t1", "t2"],
    )
    assert found.found is None


def test_with_min_replicas_a_master_no_replica_acknowledges_is_not_judged() -> None:
    # The flake: the killed master, restarted from its AOF, answered as a master for a
    # moment (a sentinel not yet told of the failover), with a fresh history and the
    # counter of writes no replica ever acknowledged; the new master's lower counter
    # must not read as a loss afterwards.
    state = SightingState()
    take_look(
        state,
        BufferOrigin("e1 1", 50, NEW, 900, replicated=True, own_offset=900),
        look(50, 900, NEW),
        ["t1"],
    )
    third = "c" * 40
    glimpse = BufferOrigin("e1 1", 70, third, 0, replicated=True, own_offset=0)
    assert take_look(state, glimpse, look(70, 0, third), ["t1", "t9"]).found is None
    assert state.last is not None and state.last.history == NEW
    again = BufferOrigin("e1 1", 52, NEW, 950, replicated=True, own_offset=950)
    assert take_look(state, again, look(52, 950, NEW), ["t1"]).found is None
    assert state.last.seq == 52
    # Without min_replicas the same glimpse is judged (writes to it were acknowledged).
    unreplicated = BufferOrigin("e1 1", 40, third, 10, own_offset=10)
    assert take_look(state, unreplicated, look(40, 10, third), []).found is not None
