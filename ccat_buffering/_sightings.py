"""Sightings of a site's buffer, kept on the watching host's disk, and what a change means.

A sighting is what :class:`~ccat_buffering.buffer_loss.BufferWatch` saw at one
look: the buffer's marker (epoch and sequence counter), how many unfinished
transactions it held, and where in the server's replication history it stood
(the replication id and the offset that counts as acknowledged). The last
sighting and a short history of earlier ones are kept in a small JSON file on
the watching host (:class:`SightingFile`), written at every look at which
something moved, so that they never depend on the main database being up: a
link outage is exactly when the buffer holds data. :func:`judge` compares a
new look with them and tells a loss (and which sequence numbers it may
cover) from a change that lost nothing, such as a failover to a replica that
holds everything seen.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "HISTORY",
    "BufferOrigin",
    "Judgement",
    "Sighting",
    "SightingFile",
    "SightingState",
    "default_state_dir",
    "judge",
    "new_epoch_after",
]

HISTORY = 600
"""Earlier sightings kept (10 minutes at one look a second): where a fork is placed."""


@dataclass(frozen=True, slots=True)
class BufferOrigin:
    """What a store answers about itself at one look, in one round trip.

    Attributes:
        epoch: The buffer's marker (``None``: it has none).
        seq: Its sequence counter.
        history: The server's replication id (``None``: the store has none).
        offset: The offset of that history that counts as acknowledged: the
            master's own, or with ``min_replicas`` the one that many replicas hold.
        previous_history: The replication id this server followed before it
            was promoted (``None``: none).
        fork_offset: Up to (not including) which offset of
            ``previous_history`` this server holds the same data.
    """

    epoch: str | None
    seq: int
    history: str | None = None
    offset: int = 0
    previous_history: str | None = None
    fork_offset: int = 0
    replicated: bool = False
    """Writes are acknowledged only once replicas hold them (``min_replicas``)."""
    own_offset: int | None = None
    """The master's own offset, read after the marker (``None``: ``offset``): every
    sequence number read was taken at or below it."""

    @property
    def read_at(self) -> int:
        """The offset at or below which everything this look read was written."""
        return self.offset if self.own_offset is None else self.own_offset

    @property
    def acknowledges_nothing(self) -> bool:
        """Writes need replicas, and no replica acknowledges this history.

        A master just restarted, or promoted before its replica joined (two
        masters for a while): nothing it holds or lacks is acknowledged yet,
        so it is not judged until it can acknowledge.
        """
        return self.replicated and self.history is not None and self.offset <= 0


@dataclass(slots=True)
class Sighting:
    """One look at the buffer, as kept.

    ``offset`` is the master's own offset when the counter was read: a
    sighting is kept as the last one only once that offset is acknowledged
    (with ``min_replicas``, once the replicas hold it), so that a sequence
    number that was never acknowledged is never reported lost.
    """

    epoch: str
    seq: int
    held: int
    seen_at: str
    history: str | None = None
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Judgement:
    """A loss told from two looks.

    Attributes:
        cause: What the marker and the history showed.
        seen_seq: The highest sequence number that may be gone.
        found_seq: The sequence number at and below which nothing seen is gone
            (``None``: none is known to have survived).
        open_ended: Sequence numbers after ``seen_seq`` may be gone too.
    """

    cause: str
    seen_seq: int
    found_seq: int | None
    open_ended: bool = True


def _fork_floor(history: list[Sighting], origin: BufferOrigin) -> int | None:
    """The counter at the last sighting the new master holds whole, if one was kept."""
    held = [
        s.seq
        for s in history
        if s.history == origin.previous_history and s.offset < origin.fork_offset
    ]
    return max(held) if held else None


def judge(last: Sighting, history: list[Sighting], origin: BufferOrigin) -> Judgement | None:
    """Whether ``origin`` follows from ``last`` without loss; the loss if not.

    Args:
        last: The last sighting.
        history: Earlier sightings, oldest first.
        origin: The new look. With ``origin.replicated`` the offsets are
            those replicas acknowledged: a failover that keeps them loses
            nothing acknowledged.

    Returns:
        ``None`` when nothing seen is gone.
    """
    if origin.epoch is None:
        return Judgement(
            "its marker is gone: a restart without persistence, or a flush", last.seq, None
        )
    if origin.epoch != last.epoch:
        if _follows(origin.epoch, last.epoch):
            return None  # another watcher recorded this loss and stamped a new epoch
        return Judgement(
            "it carries another marker: it was replaced by another buffer", last.seq, None
        )
    if (
        origin.history is not None
        and origin.history != last.history
        and origin.previous_history == last.history
    ):
        if last.offset < origin.fork_offset:
            # The new master took over after the last sighting: it holds all of it.
            return None
        return Judgement(
            f"a failover to a replica that was behind: it holds its old master's history "
            f"up to offset {origin.fork_offset}, the last sighting stood at {last.offset}",
            last.seq,
            _fork_floor(history, origin),
            # Even with min_replicas: a replica behind an acknowledged offset means
            # another replica acknowledged, so later acknowledged writes may be gone too.
        )
    if origin.seq < last.seq:
        return Judgement(
            f"its counter went back from {last.seq} to {origin.seq}: a failover to a replica "
            "that was behind, or a restore",
            last.seq,
            origin.seq,
        )
    return None


def new_epoch_after(epoch: str, token: str) -> str:
    """An epoch that names the one it follows (so other watchers know the loss is recorded)."""
    return f"{token} {epoch.split(' ', 1)[0]}"


def _follows(epoch: str, previous: str) -> bool:
    parts = epoch.split(" ")
    return len(parts) >= 3 and parts[2] == previous.split(" ", 1)[0]


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/ccat-buffering``, or ``~/.local/state/ccat-buffering``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ccat-buffering"


@dataclass(slots=True)
class SightingState:
    """What the file holds.

    Attributes:
        exists: The file was there (a watcher on this host has looked before).
        last: The last sighting (``None``: none since the last loss of the marker).
        history: Earlier sightings, oldest first.
        superseded: Replication ids that a promoted replica replaced, and the
            offset the replica holds of each: a look at such a master again
            is a look at the old side of a failover.
        losses: Losses not yet written to the main database or acknowledged.
        held_ids: The unfinished transactions of ``last`` (``None``: not known:
            more than the watch keeps, or a sighting from the main database).
        pending: Looks not yet acknowledged (newest last), each a sighting
            and its unfinished transactions.
    """

    exists: bool = False
    last: Sighting | None = None
    history: list[Sighting] = field(default_factory=list)
    superseded: dict[str, int] = field(default_factory=dict)
    losses: list[dict[str, Any]] = field(default_factory=list)
    held_ids: list[str] | None = None
    pending: list[tuple[Sighting, list[str] | None]] = field(default_factory=list)


class SightingFile:
    """A site's sightings and its losses not yet in the main database, in one JSON file.

    Every change is written whole to a temporary file, flushed to disk and
    renamed over the old one, under an exclusive lock: the processes of one
    host share the file, and a crash leaves the old file or the new one.

    Args:
        directory: Where the file lives (created if missing).
        site: The site's name.
    """

    def __init__(self, directory: Path, site: str) -> None:
        self.directory = directory
        self.path = directory / f"buffer-{site}.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[SightingState]:
        """The state under the lock; written back if the block ends without an error."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f".{self.path.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.read()
            before = self._dump(state) if state.exists else None
            yield state
            if self._dump(state) != before:
                self._write(state)

    def read(self) -> SightingState:
        """The state as on disk (empty if there is no file)."""
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return SightingState()
        return SightingState(
            True,
            Sighting(**raw["last"]) if raw.get("last") else None,
            [Sighting(**s) for s in raw.get("history", [])],
            dict(raw.get("superseded", {})),
            list(raw.get("losses", [])),
            raw.get("held_ids"),
            [(Sighting(**p["sighting"]), p.get("ids")) for p in raw.get("pending", [])],
        )

    @staticmethod
    def _dump(state: SightingState) -> str:
        return json.dumps(
            {
                "last": asdict(state.last) if state.last else None,
                "history": [asdict(s) for s in state.history[-HISTORY:]],
                "superseded": state.superseded,
                "losses": state.losses,
                "held_ids": state.held_ids,
                "pending": [{"sighting": asdict(s), "ids": ids} for s, ids in state.pending],
            }
        )

    def _write(self, state: SightingState) -> None:
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".sightings-")
        try:
            with os.fdopen(handle, "w") as out:
                out.write(self._dump(state))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
