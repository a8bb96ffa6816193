"""How a buffered transaction moves through its states after :meth:`buffer`.

The moves the background processor makes (claim, committed, failed,
conflicted, paused), the replication tracker's (replicated) and the
operators' (replay), each one atomic group, so that a crash between two of
them leaves every transaction in a state the next processor understands. A
part of :class:`~ccat_buffering.buffer.manager.TransactionManager`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ccat_buffering.buffer._entries import claim_read
from ccat_buffering.buffer._recent_commits import RecentCommits
from ccat_buffering.buffer.cache_writes import cache_writes as _cache_writes
from ccat_buffering.buffer.cache_writes import generated_writes
from ccat_buffering.buffer.protocols import (
    Backend,
    Claim,
    SupportsReplicatedMoves,
    SupportsStatusBatches,
    WriteBatch,
)
from ccat_buffering.buffer.replays import read_letter, replay_set
from ccat_buffering.buffer.retry import FailureKind, RetryPolicy, describe_error
from ccat_buffering.logs import SiteLogger
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import Transaction, TransactionState, TransactionStatus
from ccat_buffering.write.status import (
    add_event,
    as_json,
    constructed,
    copied_status,
    made_event,
    made_status,
    utc_now,
)

__all__ = [
    "CONFLICT_DELAY",
    "Delivery",
    "Transitions",
    "as_json",
    "buffered_at",
    "buffered_status",
]

CONFLICT_DELAY = 0.05

_BUFFERED_GIVEN = frozenset(("transaction_id", "endpoint", "state", "created_at"))


@dataclass(frozen=True)
class Delivery:
    """A claimed transaction on its way to the database.

    Attributes:
        claim: The buffer's claim on it.
        transaction: The transaction, read from the claim's payload.
        status: Its status when it was claimed.
    """

    claim: Claim
    transaction: Transaction
    status: TransactionStatus

    @property
    def transaction_id(self) -> str:
        """The transaction's id."""
        return self.transaction.transaction_id


def _utc(value: object) -> bool:
    return type(value) is dt.datetime and value.tzinfo is dt.UTC


def buffered_status(transaction: Transaction, **changes: Any) -> TransactionStatus:
    """A new status of ``transaction``: ``buffered``, with ``changes``."""
    values = transaction.__dict__
    created, updated = values["created_at"], changes.get("updated_at")
    if (
        changes.keys() <= {"updated_at"}
        and type(values["transaction_id"]) is str
        and type(values["endpoint"]) is str
        and _utc(created)
        and (updated is None or _utc(updated))
    ):
        # What validation would make of values a validated transaction holds
        # (every buffer() makes one): without running it.
        return made_status(
            {
                "transaction_id": values["transaction_id"],
                "endpoint": values["endpoint"],
                "state": TransactionState.BUFFERED,
                "attempts": 0,
                "last_error": None,
                "commit_lsn": None,
                "created_at": created,
                "updated_at": utc_now() if updated is None else updated,
                "committed_at": None,
                "replicated_at": None,
                "history": (),
                "generated": {},
            },
            {*_BUFFERED_GIVEN, *changes},
        )
    return TransactionStatus(
        transaction_id=transaction.transaction_id,
        endpoint=transaction.endpoint,
        state=TransactionState.BUFFERED,
        created_at=transaction.created_at,
        **changes,
    )


_GIVEN_AT = frozenset((*_BUFFERED_GIVEN, "updated_at"))
_DATETIME = dt.datetime
_UTC = dt.UTC
_BUFFERED = TransactionState.BUFFERED


def buffered_at(transaction: Transaction, updated_at: dt.datetime) -> TransactionStatus:
    """``buffered_status(transaction, updated_at=updated_at)``: the status every buffer() makes."""
    values = transaction.__dict__
    transaction_id, endpoint, created = (
        values["transaction_id"],
        values["endpoint"],
        values["created_at"],
    )
    if (
        type(transaction_id) is str
        and type(endpoint) is str
        and type(created) is _DATETIME
        and created.tzinfo is _UTC
        and type(updated_at) is _DATETIME
        and updated_at.tzinfo is _UTC
    ):
        return constructed(
            TransactionStatus,
            {
                "transaction_id": transaction_id,
                "endpoint": endpoint,
                "state": _BUFFERED,
                "attempts": 0,
                "last_error": None,
                "commit_lsn": None,
                "created_at": created,
                "updated_at": updated_at,
                "committed_at": None,
                "replicated_at": None,
                "history": (),
                "generated": {},
            },
            set(_GIVEN_AT),
        )
    return buffered_status(transaction, updated_at=updated_at)


def put_statuses(batch: WriteBatch, statuses: Sequence[TransactionStatus], ttl: float) -> None:
    """Stage ``statuses`` in ``batch``: in one call where the batch can (the drain's three)."""
    if isinstance(batch, SupportsStatusBatches):
        batch.put_statuses(statuses, ttl)
    else:
        for status in statuses:
            batch.put_status(status, ttl)


# A transaction whose life is routine (buffered, processing, committed, replicated)
# keeps no history: its status's times tell it, and statuses live in the buffer's
# memory. The first event out of the routine starts the history (see _advance).
_UNUSUAL = (TransactionState.RETRYING, TransactionState.FAILED)


class Transitions:
    """The moves of :class:`~ccat_buffering.buffer.manager.TransactionManager` after buffering."""

    if TYPE_CHECKING:
        backend: Backend
        retry_policy: RetryPolicy
        status_ttl: float
        cache_ttl: float
        max_payload_bytes: int | None
        unreadable: int
        recent_commits: RecentCommits
        listeners: list[Any]

        def now(self) -> dt.datetime:
            """See :meth:`TransactionManager.now`."""

        def _tell(self, statuses: Sequence[TransactionStatus]) -> None:
            """See :meth:`TransactionManager._tell`."""

    def _advance(
        self,
        status: TransactionStatus,
        state: TransactionState,
        *,
        event: str | None = None,
        note: str | None = None,
        now: dt.datetime | None = None,
        **changes: Any,
    ) -> TransactionStatus:
        now = now or self.now()
        error = changes.get("last_error")
        note = note or error
        history = status.history
        # A claim is no event: each attempt is recorded by how it ended.
        claim = event is None and state is TransactionState.PROCESSING
        # A commit's LSN note alone keeps a routine life routine: commit_lsn holds it.
        unusual = event is not None or error is not None or state in _UNUSUAL
        if not claim and (history or unusual):
            # Built unvalidated: aware UTC times and plain text (run per transaction).
            if not history:
                # The story starts: it was buffered (the status's own time).
                history = (made_event(status.created_at, "buffered"),)
            step = made_event(now, event or state.value, note)
            history = add_event(history, step)
        # Copied unvalidated: these values are already typed, and it runs per transaction.
        return copied_status(
            status, {**changes, "state": state, "updated_at": now, "history": history}
        )

    def _advance_all(
        self,
        statuses: Sequence[TransactionStatus],
        state: TransactionState,
        now: dt.datetime,
        *,
        note: str | None = None,
        **changes: Any,
    ) -> list[TransactionStatus]:
        """:meth:`_advance` of each status to ``state`` at ``now`` with ``changes``: no event.

        A routine status (no history, as the drain's claim, commit and
        replication leave most) is copied with the changes, as ``_advance``
        copies it, without its per-call work; any other goes through it.
        """
        update = {**changes, "state": state, "updated_at": now}
        given = {*update, "history"}
        # An error or an unusual state is an event: each such move goes through _advance.
        usual = changes.get("last_error") is None and state not in _UNUSUAL
        out = []
        for status in statuses:
            if status.history or not usual:
                out.append(self._advance(status, state, note=note, now=now, **changes))
            else:
                values = status.__dict__.copy()
                values.update(update)
                out.append(made_status(values, status.__pydantic_fields_set__ | given))
        return out

    # -- what the processor calls --------------------------------------------

    async def claim(self, count: int, lease_seconds: float) -> list[Delivery]:
        """Claim transactions from the head and mark them ``processing``.

        An entry that is not a readable transaction is dead-lettered at once
        with its raw text and the error; it never blocks the queue.

        Args:
            count: At most this many.
            lease_seconds: The claims' lease.

        Returns:
            The readable ones, in buffer order.
        """
        # The time of the move, before the claim: a store may write it (see claim_read).
        now = self.now()
        parsed, unreadable, strays = await claim_read(
            self.backend, count, lease_seconds, self.max_payload_bytes, now
        )
        if not parsed and not unreadable:
            return []
        refused = await self.backend.status.get_many(
            [r.transaction_id for r in unreadable if r.transaction_id]
        )
        async with self.backend.atomic() as batch:
            for status in strays:
                # Moved by the claim for an entry not read as its transaction: as it was.
                batch.put_status(status, self.status_ttl)
            for entry in unreadable:
                batch.dead_letter(entry.claim.receipt, entry.reason, entry.transaction_id)
                if entry.transaction_id is not None:
                    old = refused.pop(0)
                    if old is not None:
                        failed = self._advance(
                            old, TransactionState.FAILED, last_error=entry.reason
                        )
                        batch.put_status(failed, self.status_ttl)
                    batch.release_cache([entry.transaction_id])
            # Those the claim wrote processing come as they are now; the rest are written here.
            written = self._advance_all(
                [
                    old or buffered_status(tx)
                    for _, tx, old, moved in parsed
                    if old is None or not moved
                ],
                TransactionState.PROCESSING,
                now,
            )
            advanced = iter(written)
            deliveries = [
                Delivery(claim, tx, next(advanced) if status is None or not moved else status)
                for claim, tx, status, moved in parsed
            ]
            put_statuses(batch, written, self.status_ttl)
        log = SiteLogger(__name__, self.backend.site)
        for entry in unreadable:
            # Every entry dead-lettered here is said, with the id to find it by.
            self.unreadable += 1
            known = entry.transaction_id or f"raw-{entry.claim.receipt}"
            log.error(
                "dead-lettered entry %s as %s: %s",
                entry.claim.receipt,
                known,
                entry.reason,
                transaction_id=known,
            )
        return deliveries

    async def committed(
        self,
        deliveries: Sequence[Delivery],
        commit_lsn: LSN | None,
        generated: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    ) -> list[TransactionStatus]:
        """Record that the database holds these transactions, and acknowledge them.

        Their caches stay until the replication tracker sees the replica
        replay ``commit_lsn``. What the database computed for their creates
        goes into their statuses, and each such row into the buffered data
        cache under its generated key (released with the rest).

        Args:
            deliveries: Applied now, or found in the ledger.
            commit_lsn: The batch's commit LSN, if the database has one.
            generated: By transaction id, what the database computed for its
                creates (see :attr:`~ccat_buffering.drain.outcome.Outcome.generated`).

        Returns:
            Their new statuses, ``committed``.
        """
        now = self.now()
        generated = generated or {}
        # A committed transaction carries no error of an earlier attempt: those
        # stay in its history.
        statuses = self._advance_all(
            [d.status for d in deliveries],
            TransactionState.COMMITTED,
            now,
            note=None if commit_lsn is None else f"LSN {commit_lsn}",
            commit_lsn=commit_lsn,
            committed_at=now,
            last_error=None,
        )
        async with self.backend.atomic() as batch:
            ack = batch.ack
            for delivery in deliveries:
                ack(delivery.claim.receipt)
            # Most batches create nothing the database computes: no lookup per transaction.
            for i, delivery in enumerate(deliveries if generated else ()):
                values = generated.get(delivery.transaction_id)
                if values:
                    statuses[i] = copied_status(statuses[i], {"generated": as_json(values)})
                    writes = generated_writes(delivery.transaction, values)
                    if writes:
                        batch.write_cache(delivery.transaction_id, writes, self.cache_ttl)
            # Statuses apply with the rest of the group, whatever the order staged.
            put_statuses(batch, statuses, self.status_ttl)
        self.recent_commits.remember(statuses)
        self._tell(statuses)
        return statuses

    async def failed(
        self,
        failures: Sequence[tuple[Delivery, BaseException, FailureKind]],
        returned: Sequence[Delivery] = (),
    ) -> list[TransactionStatus]:
        """Record failed attempts: retry in place with backoff, or dead-letter.

        Data errors count an attempt and are retried after the policy's delay
        until attempts run out; conflicts are retried soon without counting;
        permanent errors are dead-lettered at once. Those retried go back to
        the head together with ``returned``, in their original buffer order,
        and the head is held for the longest of their delays: nothing after a
        retried transaction applies before it. A dead-lettered transaction's
        caches are released: the site must not go on seeing a write that will
        not happen.

        Args:
            failures: Each transaction, its error, and whose fault it was (not
                an outage: see :meth:`paused`), in buffer order.
            returned: Claimed transactions left unapplied behind a failure;
                they go back ``buffered``, counting nothing.

        Returns:
            The new statuses of ``failures``, ``retrying`` or ``failed``.
        """
        statuses = []
        retry: list[str] = [d.claim.receipt for d in returned]
        delay = 0.0
        async with self.backend.atomic() as batch:
            for delivery in returned:
                waits = self._advance(
                    delivery.status,
                    TransactionState.BUFFERED,
                    last_error="returned unapplied: an earlier transaction is retried first",
                )
                batch.put_status(waits, self.status_ttl)
            for delivery, error, kind in failures:
                message = describe_error(error)
                attempts = delivery.status.attempts + (kind is FailureKind.DATA)
                dead = kind is FailureKind.PERMANENT or (
                    kind is FailureKind.DATA and self.retry_policy.exhausted(attempts)
                )
                state = TransactionState.FAILED if dead else TransactionState.RETRYING
                status = self._advance(
                    delivery.status, state, attempts=attempts, last_error=message
                )
                if dead:
                    batch.dead_letter(delivery.claim.receipt, message, delivery.transaction_id)
                    batch.release_cache([delivery.transaction_id])
                else:
                    retry.append(delivery.claim.receipt)
                    wait = (
                        self.retry_policy.delay(attempts)
                        if kind is FailureKind.DATA
                        else CONFLICT_DELAY
                    )
                    delay = max(delay, wait)
                batch.put_status(status, self.status_ttl)
                statuses.append(status)
            if retry:
                batch.retry_later(retry, delay)
        self._tell(statuses)
        return statuses

    async def conflicted(
        self, deliveries: Sequence[tuple[Delivery, str]]
    ) -> list[TransactionStatus]:
        """Take conflicted transactions out of the queue, ``conflicted``, in one group.

        The queue moves on at once: the main database's conflict log holds each
        one (with the transaction) until an operator resolves it. Its caches
        are released, so that the site's reads stop showing a write that did
        not happen; its status stays (no TTL while it is unresolved).

        Args:
            deliveries: Each transaction and what it met (base/mine/theirs), in
                buffer order.

        Returns:
            Their new statuses.
        """
        statuses = []
        async with self.backend.atomic() as batch:
            for delivery, reason in deliveries:
                status = self._advance(
                    delivery.status, TransactionState.CONFLICTED, last_error=reason
                )
                batch.put_status(status, self.status_ttl)
                batch.ack(delivery.claim.receipt)
                statuses.append(status)
            batch.release_cache([d.transaction_id for d, _ in deliveries])
        self._tell(statuses)
        return statuses

    async def paused(self, deliveries: Sequence[Delivery], cause: str) -> None:
        """Return claimed transactions to the head during an outage, counting nothing.

        Args:
            deliveries: In buffer order.
            cause: Why the database could not be reached.
        """
        async with self.backend.atomic() as batch:
            batch.retry_later([d.claim.receipt for d in deliveries], 0)
            for delivery in deliveries:
                status = self._advance(
                    delivery.status, TransactionState.BUFFERED, event="outage pause", note=cause
                )
                batch.put_status(status, self.status_ttl)

    # -- what the replication tracker calls ---------------------------------

    async def replicated(self, statuses: Sequence[TransactionStatus]) -> None:
        """Mark transactions ``replicated`` and release their caches, in one group."""
        now = self.now()
        ids = [s.__dict__["transaction_id"] for s in statuses]

        def moved(of: Sequence[TransactionStatus]) -> list[TransactionStatus]:
            return self._advance_all(of, TransactionState.REPLICATED, now, replicated_at=now)

        async with self.backend.atomic() as batch:
            if isinstance(batch, SupportsReplicatedMoves):
                # The store moves the routine statuses this process committed from
                # what it holds (the same, see RecentCommits): none is built here.
                # Any other (one read back, perhaps written by an older version) is
                # built here as before. One the store does not recognise (changed
                # behind this process) stays committed: the next poll reads it back.
                known = self.recent_commits.holds
                put_statuses(batch, moved([s for s in statuses if not known(s)]), self.status_ttl)
                batch.replicate(ids, now, self.status_ttl)
            else:
                put_statuses(batch, moved(statuses), self.status_ttl)
                batch.release_cache(ids)
        self.recent_commits.forget(ids)
        if self.listeners:
            self._tell(moved(statuses))

    # -- what operators call -------------------------------------------------

    async def replay(self, letter_ids: Sequence[str] | None = None) -> list[str]:
        """Put dead letters back at the head of the buffer, in their original buffer order.

        The letters named go back with their dependents among the dead letters
        (see :mod:`ccat_buffering.buffer.replays`), ahead of everything waiting, the
        oldest first. Readable transactions get a ``buffered`` status (attempts
        reset) and their caches back; unreadable entries are replayed as they
        are and will be dead-lettered again unless fixed.

        Args:
            letter_ids: Letters to replay; ``None`` for all.

        Returns:
            The ids of the letters replayed, in the order they will be claimed.
        """
        letters = replay_set(await self.backend.dead_letters.list(), letter_ids)
        # The statuses of failed transactions expire; where one is left, its history goes on.
        known = await self.backend.status.get_many(
            [letter.transaction_id or letter.letter_id for letter in letters]
        )
        before = {s.transaction_id: s for s in known if s is not None}
        async with self.backend.atomic() as batch:
            # Each staged replay goes to the head: the last staged is claimed first.
            for letter in reversed(letters):
                tx = read_letter(letter)
                if tx is None:
                    batch.replay(letter.letter_id)
                    continue
                old = before.get(tx.transaction_id) or buffered_status(tx)
                status = self._advance(
                    old,
                    TransactionState.BUFFERED,
                    event="replayed",
                    note=f"after: {letter.reason}",
                    attempts=0,
                    last_error=None,
                )
                batch.put_status(status, self.status_ttl)
                batch.write_cache(tx.transaction_id, _cache_writes(tx), self.cache_ttl)
                batch.replay(letter.letter_id)
        return [letter.letter_id for letter in letters]
