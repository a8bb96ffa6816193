"""The transaction manager: buffer, status, caches, retries and dead letters.

:meth:`TransactionManager.buffer` is the one write a service makes at a
secondary site: queue entry, status and both caches in one atomic group. The
other methods are the moves the background processor and the replication
tracker make, each one atomic group as well, so that a crash between two of
them leaves every transaction in a state the next processor understands.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic_core import to_jsonable_python

from ccat_buffering._codec import decode_value
from ccat_buffering._deprecated import forward
from ccat_buffering._entries import read_claims
from ccat_buffering._recent_commits import RecentCommits
from ccat_buffering.cache_writes import cache_writes as _cache_writes
from ccat_buffering.cache_writes import generated_writes
from ccat_buffering.conflicts.kinds import Conflict
from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.logs import SiteLogger
from ccat_buffering.lsn import LSN
from ccat_buffering.models import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Transaction,
    TransactionState,
    TransactionStatus,
)
from ccat_buffering.protocols import Backend, CachedRecord, CacheWrite, Claim
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.replays import read_letter, replay_set
from ccat_buffering.retry import FailureKind, RetryPolicy, describe_error
from ccat_buffering.status import StatusEvent, add_event

__all__ = ["Delivery", "Listener", "TransactionManager", "as_json"]

_MOVED = frozenset({"cache_writes", "key_text", "record_id"})
__getattr__ = forward(__name__, "ccat_buffering.cache_writes", _MOVED)

DEFAULT_STATUS_TTL = 3600.0
DEFAULT_CACHE_TTL = 3600.0
CONFLICT_DELAY = 0.05


class Listener(Protocol):
    """Told of every change of state the manager has made (metrics listen here).

    A listener may also have ``conflicts_found(conflicts)``, told of every
    conflict the site's writes met (decided or rejected).
    """

    def changed(self, statuses: Sequence[TransactionStatus]) -> None:
        """``statuses`` were just stored, each in its new state."""
        ...


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


def _buffered(transaction: Transaction, **changes: Any) -> TransactionStatus:
    """A new status of ``transaction``: ``buffered``, with ``changes``."""
    return TransactionStatus(
        transaction_id=transaction.transaction_id,
        endpoint=transaction.endpoint,
        state=TransactionState.BUFFERED,
        created_at=transaction.created_at,
        **changes,
    )


def as_json(generated: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Generated values as a status holds them: JSON values, the same in every store."""
    return {
        step: {name: to_jsonable_python(value) for name, value in values.items()}
        for step, values in generated.items()
    }


# A transaction whose life is routine (buffered, processing, committed, replicated)
# keeps no history: its status's times tell it, and statuses live in the buffer's
# memory. The first event out of the routine starts the history (see _advance).
_UNUSUAL = (TransactionState.RETRYING, TransactionState.FAILED)


def _copied(status: TransactionStatus, update: dict[str, Any]) -> TransactionStatus:
    """``status.model_copy(update=update)`` for a fraction of its cost (thrice per transaction)."""
    made = object.__new__(TransactionStatus)
    object.__setattr__(made, "__dict__", {**status.__dict__, **update})
    object.__setattr__(made, "__pydantic_fields_set__", status.model_fields_set | update.keys())
    object.__setattr__(made, "__pydantic_extra__", None)
    object.__setattr__(made, "__pydantic_private__", None)
    return made


def _decode_fields(record: CachedRecord) -> dict[str, Any]:
    return {name: decode_value(value) for name, value in record.fields.items()}


class TransactionManager:
    """Buffers transactions and moves them through their states.

    Args:
        backend: The site's stores.
        registry: When given, transactions naming unknown models or fields are
            refused by :meth:`buffer` before anything is written.
        retry_policy: Backoff and attempts for data errors.
        status_ttl: Seconds a terminal status is kept (origin: 3,600).
        cache_ttl: Seconds cached records live unless extended.
        max_payload_bytes: Largest serialised transaction accepted.
        clock: Seconds since the epoch, for the timestamps of statuses.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        registry: ModelRegistry | None = None,
        retry_policy: RetryPolicy | None = None,
        status_ttl: float = DEFAULT_STATUS_TTL,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.listeners: list[Listener] = []
        self.registry = registry
        self.retry_policy = retry_policy or RetryPolicy()
        self.status_ttl = status_ttl
        self.cache_ttl = cache_ttl
        self.max_payload_bytes = max_payload_bytes
        self.unreadable = 0
        """Entries dead-lettered at claim: unreadable, or over the size limit."""
        self.recent_commits = RecentCommits()
        """What this process marked committed, for its replication tracker (which turns it on)."""

    def _tell(self, statuses: Sequence[TransactionStatus]) -> None:
        for listener in self.listeners:
            try:
                listener.changed(statuses)
            except Exception:  # a listener (metrics) must never stop the work
                logging.getLogger(__name__).exception(
                    "a listener failed", extra={"site": self.backend.site}
                )

    def found_conflicts(self, conflicts: Sequence[Conflict]) -> None:
        """Tell the listeners that have ``conflicts_found`` of conflicts just met."""
        if not conflicts:
            return
        for listener in self.listeners:
            hook = getattr(listener, "conflicts_found", None)
            if hook is None:
                continue
            try:
                hook(conflicts)
            except Exception:  # a listener (metrics) must never stop the work
                logging.getLogger(__name__).exception("a listener failed")

    def now(self) -> dt.datetime:
        """The manager's clock as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

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
        note = note or changes.get("last_error")
        history = status.history
        # A claim is no event: each attempt is recorded by how it ended.
        claim = event is None and state is TransactionState.PROCESSING
        if not claim and (history or event is not None or note is not None or state in _UNUSUAL):
            # Built unvalidated: aware UTC times and plain text (run per transaction).
            if not history:
                # The story starts: it was buffered (the status's own time).
                history = (StatusEvent.model_construct(at=status.created_at, event="buffered"),)
            step = StatusEvent.model_construct(at=now, event=event or state.value, note=note)
            history = add_event(history, step)
        # Copied unvalidated: these values are already typed, and it runs per transaction.
        return _copied(status, {**changes, "state": state, "updated_at": now, "history": history})

    # -- what services call -------------------------------------------------

    def _prepare(self, transaction: Transaction) -> tuple[str, list[CacheWrite], TransactionStatus]:
        if not isinstance(transaction, Transaction):
            raise TransactionValidationError(
                f"expected a Transaction (see TransactionBuilder), not {type(transaction).__name__}"
            )
        if self.registry is not None:
            transaction = self.registry.convert(transaction)
        payload = transaction.to_json(self.max_payload_bytes)
        return payload, _cache_writes(transaction), _buffered(transaction, updated_at=self.now())

    async def buffer(self, transaction: Transaction) -> TransactionStatus:
        """Buffer a transaction: queue entry, status and caches, all or nothing.

        Args:
            transaction: From :meth:`TransactionBuilder.build`.

        Returns:
            Its status, ``buffered``.

        Raises:
            TransactionValidationError: Bad input; nothing was written.
            BackendUnavailableError: The store could not be reached, or its reply
                was lost: the write may or may not have been made. Submitting the
                same transaction again is safe; the ledger applies it once.
            BackendError: The store refused the write; nothing was written.
        """
        return (await self.buffer_many([transaction]))[0]

    async def buffer_many(self, transactions: Sequence[Transaction]) -> list[TransactionStatus]:
        """Buffer several transactions in order, in one atomic group.

        All are validated before anything is written: one bad transaction
        means none is buffered.

        Args:
            transactions: In the order they must apply.

        Returns:
            Their statuses, in the same order.
        """
        prepared = [self._prepare(tx) for tx in transactions]
        async with self.backend.atomic() as batch:
            for payload, writes, status in prepared:
                batch.push(payload)
                batch.put_status(status, self.status_ttl)
                batch.write_cache(status.transaction_id, writes, self.cache_ttl)
        statuses = [status for _, _, status in prepared]
        self._tell(statuses)
        return statuses

    async def status(self, transaction_id: str) -> TransactionStatus | None:
        """The status of a transaction, or ``None`` if unknown or expired."""
        return await self.backend.status.get(transaction_id)

    async def cached_record(self, model: str, record_id: str) -> dict[str, Any] | None:
        """A buffered record's fields as the site should see them, or ``None``.

        ``None`` too when the record's buffered state is "deleted".
        """
        record = await self.backend.cache.get(model, record_id)
        if record is None or record.deleted:
            return None
        return _decode_fields(record)

    async def cached_records(self, model: str) -> list[CachedRecord]:
        """Every buffered record of ``model`` (fields still encoded)."""
        return await self.backend.cache.list(model)

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
        claims = await self.backend.buffer.claim(count, lease_seconds)
        if not claims:
            return []
        parsed, unreadable = read_claims(claims, self.max_payload_bytes)
        statuses = await self.backend.status.get_many([tx.transaction_id for _, tx in parsed])
        refused = await self.backend.status.get_many(
            [r.transaction_id for r in unreadable if r.transaction_id]
        )
        deliveries = []
        async with self.backend.atomic() as batch:
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
            now = self.now()
            for (claim, tx), old in zip(parsed, statuses, strict=True):
                status = self._advance(old or _buffered(tx), TransactionState.PROCESSING, now=now)
                batch.put_status(status, self.status_ttl)
                deliveries.append(Delivery(claim, tx, status))
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
                creates (see :attr:`~ccat_buffering.outcome.Outcome.generated`).

        Returns:
            Their new statuses, ``committed``.
        """
        now = self.now()
        statuses = []
        generated = generated or {}
        note = None if commit_lsn is None else f"LSN {commit_lsn}"
        async with self.backend.atomic() as batch:
            for delivery in deliveries:
                # A committed transaction carries no error of an earlier attempt:
                # those stay in its history.
                values = generated.get(delivery.transaction_id)
                extra: dict[str, Any] = {"generated": as_json(values)} if values else {}
                status = self._advance(
                    delivery.status,
                    TransactionState.COMMITTED,
                    note=note,
                    commit_lsn=commit_lsn,
                    committed_at=now,
                    last_error=None,
                    now=now,
                    **extra,
                )
                batch.put_status(status, self.status_ttl)
                batch.ack(delivery.claim.receipt)
                if values:
                    writes = generated_writes(delivery.transaction, values)
                    if writes:
                        batch.write_cache(delivery.transaction_id, writes, self.cache_ttl)
                statuses.append(status)
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
        done = [
            self._advance(s, TransactionState.REPLICATED, replicated_at=now, now=now)
            for s in statuses
        ]
        async with self.backend.atomic() as batch:
            for status in done:
                batch.put_status(status, self.status_ttl)
            batch.release_cache([s.transaction_id for s in statuses])
        self.recent_commits.forget(s.transaction_id for s in statuses)
        self._tell(done)

    # -- what operators call -------------------------------------------------

    async def replay(self, letter_ids: Sequence[str] | None = None) -> list[str]:
        """Put dead letters back at the head of the buffer, in their original buffer order.

        The letters named go back with their dependents among the dead letters
        (see :mod:`ccat_buffering.replays`), ahead of everything waiting, the
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
                old = before.get(tx.transaction_id) or _buffered(tx)
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
