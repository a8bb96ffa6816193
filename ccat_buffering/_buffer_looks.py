"""One look at a site's buffer: judged against the sightings, then kept.

:class:`~ccat_buffering.buffer_loss.BufferWatch` reads the buffer (its
unfinished transactions, then its marker and replication history), and
:func:`take_look` decides, under the sightings file's lock, what the look
means (:func:`~ccat_buffering._sightings.judge`) and what of it is kept.

Only what was acknowledged is kept as the last sighting: a look whose offset
the replicas have not acknowledged yet (with ``min_replicas``) waits in
``pending`` until a later look shows them holding it. A sequence number or a
transaction that was never acknowledged is then never reported lost, and a
master that acknowledges nothing (restarted, or promoted before its replica
joined: two masters for a while) is not judged at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from ccat_buffering._sightings import (
    HISTORY,
    BufferOrigin,
    Judgement,
    Sighting,
    SightingState,
    judge,
)

__all__ = ["PENDING", "Look", "take_look"]

PENDING = 2
"""Looks kept waiting for their acknowledgement; older ones are dropped (a newer one covers).

The replicas acknowledge at least every second, and at once after each write
that waits for them, so the look before is nearly always acknowledged by the
next; each waiting look keeps its ids, so few are kept."""


@dataclass(slots=True)
class Look:
    """What one look found.

    Attributes:
        found: The loss told, if any.
        last: The sighting it was told from.
        held_ids: The unfinished transactions of ``last``: the ones that may be
            gone (``None``: not known).
        stamp_after: The buffer lost its marker: stamp a new one after this epoch.
        exact: Whether the gone among ``held_ids`` are the whole loss
            found at ``last`` (not for the old side of two masters: what it
            took past the fork was never seen).
    """

    found: Judgement | None = None
    last: Sighting | None = None
    held_ids: list[str] | None = None
    stamp_after: str | None = None
    exact: bool = True


def take_look(
    state: SightingState, origin: BufferOrigin, sighting: Sighting, ids: list[str] | None
) -> Look:
    """Judge ``origin`` against ``state`` and keep what it saw; ``state`` is changed in place.

    Args:
        state: The sightings, under the file's lock.
        origin: What the store answered.
        sighting: The look as it would be kept (``offset``: ``origin.read_at``).
        ids: The unfinished transactions read just before ``origin`` (``None``:
            too many to keep).
    """
    if origin.acknowledges_nothing:
        return Look()
    if origin.history is not None and origin.history in state.superseded:
        return _old_side(state, origin)
    last = state.last
    look = Look(last=last, held_ids=state.held_ids)
    if last is not None:
        look.found = judge(last, state.history, origin)
    if origin.previous_history is not None and origin.history != (last and last.history):
        state.superseded.setdefault(origin.previous_history, origin.fork_offset)
    if origin.epoch is None:
        state.last, state.held_ids, state.pending = None, None, []
        look.stamp_after = "" if last is None else last.epoch
        return look
    _keep(state, sighting, ids, origin.offset)
    return look


def _keep(
    state: SightingState, sighting: Sighting, ids: list[str] | None, acknowledged: int
) -> None:
    """Keep the newest acknowledged look as the last sighting; wait with the others."""
    waiting = [(s, i) for s, i in state.pending if s.history == sighting.history]
    waiting.append((sighting, ids))
    done = [(s, i) for s, i in waiting if s.offset <= acknowledged]
    state.pending = [(s, i) for s, i in waiting if s.offset > acknowledged][-PENDING:]
    if not done:
        return
    newest, newest_ids = done[-1]
    last = state.last
    if last is None or (last.epoch, last.seq, last.history, last.offset) != (
        newest.epoch,
        newest.seq,
        newest.history,
        newest.offset,
    ):
        if last is not None:
            state.history.append(last)
            del state.history[:-HISTORY]
        state.last = newest
    state.held_ids = newest_ids


def _old_side(state: SightingState, origin: BufferOrigin) -> Look:
    """A look at a master a failover replaced, still answering (two masters for a while).

    What it acknowledged past the fork is on no replica that took over: a
    loss, reported once. The look is not kept as a sighting.
    """
    assert origin.history is not None
    fork = state.superseded[origin.history]
    if fork < 0 or origin.offset < fork or state.last is None:
        return Look()
    state.superseded[origin.history] = -1
    older = [s.seq for s in state.history if s.history == origin.history and s.offset < fork]
    split = Judgement(
        f"two masters: the one replaced by a failover took writes past offset {fork}, "
        "which the new master does not hold",
        origin.seq,
        max(older) if older else None,
    )
    return Look(split, state.last, state.held_ids, exact=False)
