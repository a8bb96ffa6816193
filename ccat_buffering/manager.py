"""The transaction manager: buffer, status, caches, retries and dead letters.

:meth:`TransactionManager.buffer` is the one write a service makes at a
secondary site: queue entry, status and both caches in one atomic group. The
other methods are the moves the background processor and the replication
tracker make, each one atomic group as well, so that a crash between two of
them leaves every transaction in a state the next processor understands.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from ccat_buffering._checks import check_record_id
from ccat_buffering._codec import PLAIN_TYPES, decode_value, encode_value
from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.lsn import LSN
from ccat_buffering.models import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Operation,
    Ref,
    Transaction,
    TransactionState,
    TransactionStatus,
)
from ccat_buffering.protocols import Backend, CachedRecord, CacheKind, CacheWrite, Claim
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.retry import FailureKind, RetryPolicy, describe_error

__all__ = [
    "Delivery",
    "Listener",
    "TransactionManager",
    "cache_writes",
    "key_text",
    "record_id",
]

DEFAULT_STATUS_TTL = 3600.0
DEFAULT_CACHE_TTL = 3600.0
CONFLICT_DELAY = 0.05


_KEY_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def key_text(value: Any) -> str:
    """One key value as text in a record id: percent-encoded outside ``[A-Za-z0-9_.-]``.

    So natural keys (``"NGC 1333"``, ``"IRAS16293-2422:A"``, ``"jdoe@example.org"``)
    stay inside the store's key schema, and a ``,`` of a composite part cannot
    be taken for the separator. UUIDs, integers and dates are unchanged.

    Args:
        value: A key value, converted to its column's type.

    Returns:
        The encoded text.
    """
    if isinstance(value, enum.Enum):
        value = value.name
    elif isinstance(value, dt.datetime | dt.date | dt.time):
        value = value.isoformat()
    elif isinstance(value, Decimal):
        # One text for one number: 1.5, 1.50 and 1.5000000000 are the same key.
        value = format(value.normalize(), "f") if value.is_finite() else str(value)
    text = value if isinstance(value, str) else str(value)
    if all(c in _KEY_SAFE for c in text):
        return text
    return "".join(c if c in _KEY_SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def record_id(key: Mapping[str, Any], key_fields: Sequence[str]) -> str | None:
    """The cache id of a record: its key values as text, or ``None`` if not yet known.

    Args:
        key: The record's values (at least its key fields).
        key_fields: The model's key fields.

    Returns:
        ``"<value>"`` for a single key, ``"<v1>,<v2>"`` for a composite one, each
        part encoded by :func:`key_text`; ``None`` when a key value is missing or
        only the database will produce it.

    Raises:
        TransactionValidationError: The key is empty or too long to be a cache key.
    """
    values = [key.get(name) for name in key_fields]
    if any(v is None or isinstance(v, Ref) for v in values):
        return None
    return check_record_id(",".join(key_text(v) for v in values))


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v if type(v) in PLAIN_TYPES else encode_value(v, k)
        for k, v in record.items()
        if not isinstance(v, Ref)
    }


_LEADING_ID = re.compile(r'^\{"format_version":\d+,"transaction_id":"([^"]{1,100})"')


def _leading_id(payload: str) -> str | None:
    """The transaction id an entry starts with, without parsing all of it."""
    found = _LEADING_ID.match(payload[:200])
    return found.group(1) if found else None


def cache_writes(transaction: Transaction) -> list[CacheWrite]:
    """What a transaction writes, as the buffered data cache records it.

    Fields whose value is a ``ref()`` are left out: only the database knows them.

    Args:
        transaction: The transaction.

    Returns:
        One write per record, in step order.
    """
    writes: list[CacheWrite] = []
    for step in transaction.steps:
        op, fields = step.operation, step.key_fields
        if op is Operation.CREATE or op is Operation.BULK_CREATE:
            for record in step.records or [step.data or {}]:
                rid = record_id(record, fields)
                if rid is not None:
                    writes.append(CacheWrite(step.model, rid, CacheKind.CREATE, _fields(record)))
        elif op is Operation.UPDATE or op is Operation.DELETE:
            rid = record_id(step.key or {}, list(step.key or {}))
            if rid is None:
                continue
            kind = CacheKind.UPDATE if op is Operation.UPDATE else CacheKind.DELETE
            writes.append(CacheWrite(step.model, rid, kind, _fields(step.data or {})))
        else:
            for record in step.records or []:
                rid = record_id(record, fields)
                if rid is not None:
                    writes.append(CacheWrite(step.model, rid, CacheKind.UPDATE, _fields(record)))
    return writes


class Listener(Protocol):
    """Told of every change of state the manager has made (metrics listen here)."""

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

    def _tell(self, statuses: Sequence[TransactionStatus]) -> None:
        for listener in self.listeners:
            try:
                listener.changed(statuses)
            except Exception:  # a listener (metrics) must never stop the work
                logging.getLogger(__name__).exception("a listener failed")

    def now(self) -> dt.datetime:
        """The manager's clock as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    def _advance(
        self, status: TransactionStatus, state: TransactionState, **changes: Any
    ) -> TransactionStatus:
        # The manager's own values are already of the fields' types (aware UTC
        # datetimes, LSNs), so the copy skips validation: this runs for every
        # transaction of every batch, and advance()'s checks are for callers'.
        return status.model_copy(update={**changes, "state": state, "updated_at": self.now()})

    # -- what services call -------------------------------------------------

    def _prepare(self, transaction: Transaction) -> tuple[str, list[CacheWrite], TransactionStatus]:
        if not isinstance(transaction, Transaction):
            raise TransactionValidationError(
                f"expected a Transaction (see TransactionBuilder), not {type(transaction).__name__}"
            )
        if self.registry is not None:
            transaction = self.registry.convert(transaction)
        payload = transaction.to_json(self.max_payload_bytes)
        writes = cache_writes(transaction)
        status = TransactionStatus(
            transaction_id=transaction.transaction_id,
            endpoint=transaction.endpoint,
            state=TransactionState.BUFFERED,
            created_at=transaction.created_at,
            updated_at=self.now(),
        )
        return payload, writes, status

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
        parsed: list[tuple[Claim, Transaction]] = []
        unreadable: list[tuple[Claim, str, str | None]] = []
        for claim in claims:
            too_large = self._over_limit(claim.payload)
            if too_large is not None:
                unreadable.append((claim, too_large, _leading_id(claim.payload)))
                continue
            try:
                parsed.append((claim, Transaction.from_json(claim.payload)))
            except TransactionValidationError as exc:
                unreadable.append((claim, f"unreadable entry: {exc}", None))
        statuses = await self.backend.status.get_many([tx.transaction_id for _, tx in parsed])
        refused = await self.backend.status.get_many([t for _, _, t in unreadable if t])
        deliveries = []
        async with self.backend.atomic() as batch:
            for claim, reason, tx_id in unreadable:
                batch.dead_letter(claim.receipt, reason, tx_id)
                if tx_id is not None:
                    old = refused.pop(0)
                    if old is not None:
                        failed = self._advance(old, TransactionState.FAILED, last_error=reason)
                        batch.put_status(failed, self.status_ttl)
                    batch.release_cache([tx_id])
            for (claim, tx), old in zip(parsed, statuses, strict=True):
                base = old or TransactionStatus(
                    transaction_id=tx.transaction_id,
                    endpoint=tx.endpoint,
                    state=TransactionState.BUFFERED,
                    created_at=tx.created_at,
                )
                status = self._advance(base, TransactionState.PROCESSING)
                batch.put_status(status, self.status_ttl)
                deliveries.append(Delivery(claim, tx, status))
        log = logging.getLogger(__name__)
        for claim, reason, tx_id in unreadable:
            # Every entry dead-lettered here is said, with the id to find it by.
            self.unreadable += 1
            log.error(
                "site %s: dead-lettered entry %s as %s: %s",
                self.backend.site,
                claim.receipt,
                tx_id or f"raw-{claim.receipt}",
                reason,
            )
        return deliveries

    def _over_limit(self, payload: str) -> str | None:
        """Why an entry is refused at drain for its size (the limit holds there too)."""
        limit = self.max_payload_bytes
        if limit is None or len(payload) * 4 <= limit:
            return None
        size = len(payload.encode())
        if size <= limit:
            return None
        return (
            f"entry is {size} bytes, over the limit of {limit} (max_payload_bytes): it was "
            "not applied; raise the limit and replay it, or purge it"
        )

    async def committed(
        self, deliveries: Sequence[Delivery], commit_lsn: LSN | None
    ) -> list[TransactionStatus]:
        """Record that the database holds these transactions, and acknowledge them.

        Their caches stay until the replication tracker sees the replica
        replay ``commit_lsn``.

        Args:
            deliveries: Applied now, or found in the ledger.
            commit_lsn: The batch's commit LSN, if the database has one.

        Returns:
            Their new statuses, ``committed``.
        """
        now = self.now()
        statuses = []
        async with self.backend.atomic() as batch:
            for delivery in deliveries:
                status = self._advance(
                    delivery.status,
                    TransactionState.COMMITTED,
                    commit_lsn=commit_lsn,
                    committed_at=now,
                )
                batch.put_status(status, self.status_ttl)
                batch.ack(delivery.claim.receipt)
                statuses.append(status)
        self._tell(statuses)
        return statuses

    async def failed(
        self, failures: Sequence[tuple[Delivery, BaseException, FailureKind]]
    ) -> list[TransactionStatus]:
        """Record failed attempts: retry in place with backoff, or dead-letter.

        Data errors count an attempt and are retried after the policy's delay
        until attempts run out; conflicts are retried soon without counting;
        permanent errors are dead-lettered at once. Those retried go back to
        the head together, in their original order, and the head is held for
        the longest of their delays. A dead-lettered transaction's caches are
        released: the site must not go on seeing a write that will not happen.

        Args:
            failures: Each transaction, its error, and whose fault it was (not
                an outage: see :meth:`paused`), in buffer order.

        Returns:
            Their new statuses, ``retrying`` or ``failed``.
        """
        statuses = []
        retry: list[str] = []
        delay = 0.0
        async with self.backend.atomic() as batch:
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

    async def paused(self, deliveries: Sequence[Delivery], cause: str) -> None:
        """Return claimed transactions to the head during an outage, counting nothing.

        Args:
            deliveries: In buffer order.
            cause: Why the database could not be reached.
        """
        async with self.backend.atomic() as batch:
            batch.retry_later([d.claim.receipt for d in deliveries], 0)
            for delivery in deliveries:
                status = self._advance(delivery.status, TransactionState.BUFFERED, last_error=cause)
                batch.put_status(status, self.status_ttl)

    # -- what the replication tracker calls ---------------------------------

    async def replicated(self, statuses: Sequence[TransactionStatus]) -> None:
        """Mark transactions ``replicated`` and release their caches, in one group."""
        now = self.now()
        done = [self._advance(s, TransactionState.REPLICATED, replicated_at=now) for s in statuses]
        async with self.backend.atomic() as batch:
            for status in done:
                batch.put_status(status, self.status_ttl)
            batch.release_cache([s.transaction_id for s in statuses])
        self._tell(done)

    # -- what operators call -------------------------------------------------

    async def replay(self, letter_ids: Sequence[str] | None = None) -> list[str]:
        """Put dead letters back at the tail of the buffer, in the order they arrived.

        Readable transactions get a fresh ``buffered`` status (attempts reset)
        and their caches back; unreadable entries are replayed as they are and
        will be dead-lettered again unless fixed.

        Args:
            letter_ids: Letters to replay; ``None`` for all.

        Returns:
            The ids of the letters replayed, in order.
        """
        letters = await self.backend.dead_letters.list()
        if letter_ids is not None:
            wanted = set(letter_ids)
            letters = [letter for letter in letters if letter.letter_id in wanted]
        async with self.backend.atomic() as batch:
            for letter in letters:
                try:
                    tx = Transaction.from_json(letter.payload)
                except TransactionValidationError:
                    batch.replay(letter.letter_id)
                    continue
                status = TransactionStatus(
                    transaction_id=tx.transaction_id,
                    endpoint=tx.endpoint,
                    state=TransactionState.BUFFERED,
                    created_at=tx.created_at,
                    last_error=f"replayed after: {letter.reason}",
                )
                batch.put_status(status, self.status_ttl)
                batch.write_cache(tx.transaction_id, cache_writes(tx), self.cache_ttl)
                batch.replay(letter.letter_id)
        return [letter.letter_id for letter in letters]
