"""The roles a backend plays, as small async protocols whose docstrings are the contract.

A :class:`Backend` serves one site. It bundles a :class:`BufferStore` (the
FIFO of serialised transactions), a :class:`DeadLetterStore`, a
:class:`StatusStore`, a :class:`CacheStore` (write-through IDs and buffered
records) and a :class:`ProcessorLease`, and adds :meth:`Backend.atomic`, which
stages writes across them and applies them all together or not at all.

Every time is in seconds since the epoch as read from the backend's clock;
every duration is in seconds. Stores never parse payloads: they hold text.
Every store method and staging call refuses bad arguments before it writes
anything, as its check in :mod:`ccat_buffering.buffer.checks` says (``TypeError``,
``ValueError`` or :class:`~ccat_buffering.errors.TransactionValidationError`).
``ccat_buffering.testing`` holds the suite that checks these contracts.
"""

from __future__ import annotations

import builtins
import datetime as dt
import enum
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, runtime_checkable

from ccat_buffering.buffer._sightings import BufferOrigin
from ccat_buffering.masking import mask_text
from ccat_buffering.write.models import TransactionState, TransactionStatus

__all__ = [
    "AuditProgress",
    "Backend",
    "BufferStats",
    "BufferStore",
    "CacheKind",
    "CacheStore",
    "CacheWrite",
    "CachedRecord",
    "Claim",
    "DeadLetter",
    "DeadLetterStore",
    "KeyInfo",
    "MemoryReport",
    "LeaseInfo",
    "ProcessorLease",
    "StatusStore",
    "SupportsAuditLog",
    "SupportsChartSamples",
    "SupportsLetterPaging",
    "SupportsStatusPaging",
    "SupportsBufferHealth",
    "SupportsBufferMarker",
    "SupportsBufferOrigin",
    "SupportsIdempotencyKeys",
    "SupportsInspection",
    "SupportsKeyAudit",
    "SupportsOperatorPause",
    "SupportsProcessorReports",
    "SupportsReplicatedMoves",
    "SupportsStatusBatches",
    "WriteBatch",
]


@dataclass(frozen=True)
class Claim:
    """An entry taken from the head of the buffer under a lease.

    Attributes:
        receipt: Names this claim in ``ack``, ``retry_later`` and ``dead_letter``.
            Every claim gets a new receipt, so a processor that lost an entry
            to recovery cannot settle the entry's later claim.
        payload: The entry's text as it was pushed.
        lease_expires_at: When :meth:`BufferStore.recover` may take it back.
    """

    receipt: str
    payload: str
    lease_expires_at: float


@dataclass(frozen=True)
class BufferStats:
    """Counts of one site's buffer.

    Attributes:
        depth: Entries waiting to be claimed.
        in_flight: Entries claimed and not yet acknowledged.
        dead_letters: Entries parked in the dead-letter store.
        held_until: The head may not be claimed before this time (a retry's
            backoff), or ``None``.
    """

    depth: int
    in_flight: int
    dead_letters: int
    held_until: float | None = None


@dataclass(frozen=True)
class DeadLetter:
    """A transaction that could not be applied, with why.

    Attributes:
        letter_id: The transaction id, or ``raw-<receipt>`` for an entry that
            was not a readable transaction.
        payload: The entry's text exactly as it was buffered.
        reason: The error that sent it here, passwords masked (whatever the
            store holds: a reason is shown to operators and over HTTP).
        dead_lettered_at: When it arrived.
        transaction_id: The transaction's id, where the payload was readable.
    """

    letter_id: str
    payload: str
    reason: str
    dead_lettered_at: float
    transaction_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", mask_text(self.reason))


class CacheKind(enum.StrEnum):
    """What a buffered step did to a record, as the buffered data cache records it."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True)
class CacheWrite:
    """One record written by a buffered transaction.

    Attributes:
        model: The model's name (a plain identifier).
        record_id: The record's key as text (a plain identifier).
        kind: Create, update or delete.
        fields: Field values, already encoded as JSON-compatible data.
    """

    model: str
    record_id: str
    kind: CacheKind
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CachedRecord:
    """A record as buffered writes left it.

    Attributes:
        model: The model's name.
        record_id: The record's key as text.
        fields: Every buffered field, later writes merged over earlier ones.
        created: A buffered create wrote the whole record.
        deleted: A buffered delete removed it.
        transaction_ids: The unreleased transactions that wrote it, in order.
        expires_at: When the entry expires unless extended.
    """

    model: str
    record_id: str
    fields: Mapping[str, Any]
    created: bool
    deleted: bool
    transaction_ids: tuple[str, ...]
    expires_at: float


@dataclass(frozen=True)
class LeaseInfo:
    """Who drains a site, and until when unless renewed."""

    holder: str
    expires_at: float


@dataclass(frozen=True)
class KeyInfo:
    """One key of a site, as an operator inspects it.

    Attributes:
        key: The key's full name.
        kind: Its type (``string``, ``hash``, ``list``, ...).
        ttl_seconds: Seconds left, or ``None`` for a key without a TTL.
    """

    key: str
    kind: str
    ttl_seconds: float | None


@runtime_checkable
class BufferStore(Protocol):
    """The durable FIFO of one site's serialised transactions."""

    async def push(self, payloads: Sequence[str]) -> None:
        """Append entries at the tail, in the given order.

        Args:
            payloads: Entry texts; an empty sequence does nothing.
        """
        ...

    async def claim(self, count: int, lease_seconds: float) -> list[Claim]:
        """Move up to ``count`` entries from the head into flight, oldest first.

        Nothing is removed: a claimed entry stays in flight until acknowledged,
        retried, dead-lettered or recovered.

        Args:
            count: At most this many entries (at least 1).
            lease_seconds: How long the claim holds before recovery may undo it.

        Returns:
            The claims in buffer order; empty when the buffer is empty or the
            head is held by a retry's backoff.
        """
        ...

    async def ack(self, receipts: Sequence[str]) -> int:
        """Remove in-flight entries for good, after their commit.

        Args:
            receipts: Claims to acknowledge; unknown or recovered receipts are
                ignored (their entries are not touched).

        Returns:
            How many entries were removed.
        """
        ...

    async def retry_later(self, receipts: Sequence[str], delay_seconds: float) -> int:
        """Put in-flight entries back at the head, in their original order, and hold it.

        The entries keep their place ahead of everything buffered after them.
        The head cannot be claimed until ``delay_seconds`` have passed (a later
        call replaces the hold; 0 lifts it).

        Args:
            receipts: Claims to put back; unknown receipts are ignored.
            delay_seconds: Backoff before the head may be claimed again.

        Returns:
            How many entries were put back.
        """
        ...

    async def dead_letter(
        self, receipt: str, reason: str, transaction_id: str | None = None
    ) -> bool:
        """Move an in-flight entry to the dead-letter store with ``reason``.

        Args:
            receipt: The claim.
            reason: The error, as an operator should read it.
            transaction_id: The transaction's id if the payload was readable;
                it becomes the letter's id (else ``raw-<receipt>``).

        Returns:
            ``False`` if the receipt was unknown (nothing moved).
        """
        ...

    async def recover(self, *, include_unexpired: bool = False) -> int:
        """Return in-flight entries whose lease expired to the head.

        They go back in their original buffer order, ahead of every waiting
        entry. A processor that has just taken the site's lease passes
        ``include_unexpired=True``: whatever is in flight then was left by a
        processor that is gone.

        Args:
            include_unexpired: Recover every in-flight entry.

        Returns:
            How many entries were returned.
        """
        ...

    async def stats(self) -> BufferStats:
        """Count waiting, in-flight and dead-lettered entries."""
        ...


@runtime_checkable
class DeadLetterStore(Protocol):
    """Transactions that could not be applied, kept until replayed or purged."""

    async def list(self, offset: int = 0, limit: int | None = None) -> list[DeadLetter]:
        """Letters in the order they arrived.

        Args:
            offset: Letters to skip.
            limit: At most this many; ``None`` for all.
        """
        ...

    async def get(self, letter_id: str) -> DeadLetter | None:
        """One letter by id, or ``None`` if there is none."""
        ...

    async def replay(self, letter_ids: Sequence[str] | None = None) -> builtins.list[DeadLetter]:
        """Move letters back to the head of the buffer, in the order they arrived.

        They are claimed next, before everything that waits, the first arrived
        first. The order of ``letter_ids`` does not matter; unknown ids are
        ignored.

        Args:
            letter_ids: Letters to replay; ``None`` for all.

        Returns:
            The letters replayed, in the order they were pushed.
        """
        ...

    async def purge(self, letter_ids: Sequence[str] | None = None) -> int:
        """Delete letters for good.

        Args:
            letter_ids: Letters to delete; ``None`` for all.

        Returns:
            How many were deleted.
        """
        ...


@runtime_checkable
class StatusStore(Protocol):
    """One status per transaction, indexed by state."""

    async def get(self, transaction_id: str) -> TransactionStatus | None:
        """The status, or ``None`` if unknown or expired."""
        ...

    async def get_many(self, transaction_ids: Sequence[str]) -> list[TransactionStatus | None]:
        """Statuses in the order of the ids, ``None`` where unknown or expired."""
        ...

    async def put(self, status: TransactionStatus, ttl_seconds: float) -> None:
        """Store a status, replacing the previous one and moving it between state indexes.

        A status in a terminal state (``replicated``, ``failed``) expires
        ``ttl_seconds`` after this call; any other never expires (a later
        non-terminal put removes an earlier expiry).

        Args:
            status: The status.
            ttl_seconds: Lifetime once terminal.
        """
        ...

    async def ids(self, state: TransactionState, limit: int | None = None) -> list[str]:
        """Transaction ids in ``state``, without scanning keys.

        ``committed`` ids come in commit-LSN order (those without an LSN
        first); other states in the order their statuses were put. Expired
        statuses are not listed.

        Args:
            state: The state.
            limit: At most this many; ``None`` for all.
        """
        ...

    async def counts(self) -> dict[TransactionState, int]:
        """How many live statuses are in each state (every state present)."""
        ...


@runtime_checkable
class CacheStore(Protocol):
    """Write-through IDs and buffered records, visible at the site before they replicate."""

    async def write(
        self, transaction_id: str, writes: Sequence[CacheWrite], ttl_seconds: float
    ) -> None:
        """Record what a buffered transaction writes.

        A create replaces the record's fields and records the transaction in
        the ID cache; an update merges its fields over the record's, field by
        field; a delete marks the record deleted. The record joins its model's
        index; its entry and the transaction's ID-cache entries expire
        ``ttl_seconds`` from now unless extended (an expiry is never shortened).

        Args:
            transaction_id: The transaction.
            writes: In step order.
            ttl_seconds: Lifetime unless extended.
        """
        ...

    async def get(self, model: str, record_id: str) -> CachedRecord | None:
        """A buffered record, or ``None`` if none is cached or it expired."""
        ...

    async def list(self, model: str) -> list[CachedRecord]:
        """Every live buffered record of ``model``, in the order first written."""
        ...

    async def get_many(
        self, model: str, record_ids: Sequence[str]
    ) -> builtins.list[CachedRecord | None]:
        """Buffered records in the order of ``record_ids``, ``None`` where none is live.

        One round trip however many ids are asked (reads ask for the ids of
        the database rows they return).
        """
        ...

    async def find(self, model: str, equals: Mapping[str, Any]) -> builtins.list[CachedRecord]:
        """Live records of ``model`` that hold at least one of ``equals`` in their fields.

        A record qualifies when one of its buffered fields has exactly the
        value given for it (values compare as the JSON data they are buffered
        as); a field a record does not hold never qualifies it. Its other
        fields may differ: the caller decides what matches. Records come in
        the order first written, each once. The backend may keep an index
        by field value, so that the cost follows the records found, not
        those buffered (the Redis backend indexes a field from the first
        ``find()`` on it, which pays one scan of the model's records).

        Args:
            model: The model's name.
            equals: Field names and JSON-compatible values (as in
                :attr:`CacheWrite.fields`); empty finds nothing.
        """
        ...

    async def created_by(self, model: str, record_id: str) -> str | None:
        """The ID cache: the transaction that creates this record, if it is buffered."""
        ...

    async def extend(self, transaction_ids: Sequence[str], ttl_seconds: float) -> int:
        """Push the expiry of every entry the transactions wrote to ``ttl_seconds`` from now.

        Returns:
            How many entries were extended.
        """
        ...

    async def release(self, transaction_ids: Sequence[str]) -> int:
        """Forget what the transactions wrote, once the replica shows it.

        A record written by other unreleased transactions too stays, with
        those transactions; one written by no other goes, with its ID-cache
        entry and its place in the model index.

        Returns:
            How many entries were deleted.
        """
        ...


@runtime_checkable
class ProcessorLease(Protocol):
    """Which processor drains the site: one at a time, so order holds."""

    async def acquire(self, holder: str, ttl_seconds: float) -> bool:
        """Take the lease if it is free or expired, or renew it if ``holder`` has it.

        Returns:
            Whether ``holder`` now holds it.
        """
        ...

    async def renew(self, holder: str, ttl_seconds: float) -> bool:
        """Extend the lease only if ``holder`` still holds it.

        Returns:
            ``False`` if another took it or it expired.
        """
        ...

    async def release(self, holder: str) -> bool:
        """Give the lease up only if ``holder`` holds it.

        Returns:
            Whether it was released.
        """
        ...

    async def current(self) -> LeaseInfo | None:
        """The live lease, or ``None``."""
        ...


class WriteBatch(Protocol):
    """Writes staged inside :meth:`Backend.atomic`; each mirrors a store method.

    Staging returns at once and changes nothing: the writes apply when the
    ``atomic()`` block exits without an error, all together, in the order
    staged. A staging call with bad arguments raises at once.
    """

    def push(self, payload: str) -> None:
        """Stage :meth:`BufferStore.push` of one entry."""
        ...

    def ack(self, receipt: str) -> None:
        """Stage :meth:`BufferStore.ack` of one claim."""
        ...

    def retry_later(self, receipts: Sequence[str], delay_seconds: float) -> None:
        """Stage :meth:`BufferStore.retry_later`."""
        ...

    def dead_letter(self, receipt: str, reason: str, transaction_id: str | None) -> None:
        """Stage :meth:`BufferStore.dead_letter`."""
        ...

    def replay(self, letter_id: str) -> None:
        """Stage :meth:`DeadLetterStore.replay` of one letter (to the head).

        Of several staged replays, the one staged last is claimed first.
        """
        ...

    def put_status(self, status: TransactionStatus, ttl_seconds: float) -> None:
        """Stage :meth:`StatusStore.put`."""
        ...

    def write_cache(
        self, transaction_id: str, writes: Sequence[CacheWrite], ttl_seconds: float
    ) -> None:
        """Stage :meth:`CacheStore.write`."""
        ...

    def release_cache(self, transaction_ids: Sequence[str]) -> None:
        """Stage :meth:`CacheStore.release`."""
        ...


@runtime_checkable
class SupportsStatusBatches(Protocol):
    """Capability of a :class:`WriteBatch`: stage many statuses in one call.

    The drain writes a status for every transaction it claims, commits and
    sees replicated; a batch that has this capability stages them for less
    than one :meth:`WriteBatch.put_status` each (on Redis, the routine ones of
    one state, time and LSN share one operation). Batches without it are
    given the statuses one by one.
    """

    def put_statuses(self, statuses: Sequence[TransactionStatus], ttl_seconds: float) -> None:
        """Stage :meth:`WriteBatch.put_status` of each status, in order: the same writes.

        Raises:
            TypeError, ValueError, TransactionValidationError: As ``put_status``
                would for any of them; then nothing of the call is staged.
        """
        ...


@runtime_checkable
class SupportsReplicatedMoves(Protocol):
    """Capability of a :class:`WriteBatch`: move statuses to ``replicated`` from what it stores.

    The replication tracker marks a batch of committed transactions
    ``replicated`` and releases their caches; a batch that has this
    capability makes the routine statuses' move from what it stores, so that
    the tracker builds and sends no status of its own for them (on Redis, one
    operation that carries the ids). Batches without it are given the new
    statuses with :meth:`WriteBatch.put_status` and the ids with
    :meth:`WriteBatch.release_cache`.
    """

    def replicate(
        self, transaction_ids: Sequence[str], at: dt.datetime, ttl_seconds: float
    ) -> None:
        """Stage the move of routine committed statuses to ``replicated``, then a cache release.

        A stored status of one of ``transaction_ids`` that is ``committed``
        with no history, no error and nothing generated becomes what
        :meth:`WriteBatch.put_status` of it with ``state`` ``replicated`` and
        ``updated_at`` and ``replicated_at`` at ``at`` would write, with
        ``ttl_seconds``; any other stored status (or none) is left as it is:
        stage its move with ``put_status`` in the same batch. Then the caches
        of all of them are released as :meth:`WriteBatch.release_cache` does.

        Args:
            transaction_ids: The transactions whose commit the replica shows.
            at: An aware UTC time.
            ttl_seconds: The statuses' TTL.

        Raises:
            TypeError, ValueError, TransactionValidationError: As
                ``release_cache`` and ``put_status`` would; then nothing of
                the call is staged.
        """
        ...


@runtime_checkable
class Backend(Protocol):
    """The stores of one site, and a way to write to several at once.

    A backend is an async context manager; ``aclose()`` closes what the
    backend opened itself and nothing it was given.
    """

    @property
    def site(self) -> str:
        """The site's name."""
        ...

    @property
    def buffer(self) -> BufferStore:
        """The site's FIFO."""
        ...

    @property
    def dead_letters(self) -> DeadLetterStore:
        """The site's dead letters."""
        ...

    @property
    def status(self) -> StatusStore:
        """The site's statuses."""
        ...

    @property
    def cache(self) -> CacheStore:
        """The site's write-through and buffered caches."""
        ...

    @property
    def lease(self) -> ProcessorLease:
        """The site's processor lease."""
        ...

    def atomic(self) -> AbstractAsyncContextManager[WriteBatch]:
        """Stage writes across the stores and apply them all together or not at all.

        If the block raises, nothing staged is applied and the error
        propagates. If applying fails, nothing is applied and
        :class:`~ccat_buffering.errors.BackendError` is raised.
        """
        ...

    async def aclose(self) -> None:
        """Release what the backend opened itself."""
        ...

    async def __aenter__(self) -> Self:
        """Return the backend."""
        ...

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the backend."""
        ...


@runtime_checkable
class SupportsProcessorReports(Protocol):
    """Capability of a :class:`ProcessorLease`: where the lease holder says how it is doing.

    A backend that has it offers it on ``backend.lease``, not on the backend:
    the report belongs with the lease of the processor that publishes it.
    The processor publishes there while it holds the lease; operators' tools
    in other processes read it (``ccat-buffering status``, health).
    """

    async def publish_report(self, report: str, ttl_seconds: float) -> None:
        """Replace the site's processor report (JSON text); it expires after ``ttl_seconds``."""
        ...

    async def processor_report(self) -> str | None:
        """The latest live report, or ``None``."""
        ...


@runtime_checkable
class SupportsIdempotencyKeys(Protocol):
    """Capability of a :class:`StatusStore`: records of idempotency keys.

    A key names one client request; its record (JSON text, opaque to the
    store) says which transaction the request became. Keys are passed as
    their SHA-256 in hex, so any text a client sends is a safe name.
    """

    async def claim_key(self, digest: str, record: str, ttl_seconds: float) -> str | None:
        """Store ``record`` under ``digest`` unless a live record is there, atomically.

        Of concurrent claims of one key exactly one stores its record.

        Returns:
            ``None`` when this call stored it; else the live record, unchanged.
        """
        ...

    async def get_key(self, digest: str) -> str | None:
        """The live record under ``digest``, or ``None``."""
        ...

    async def put_key(self, digest: str, record: str, ttl_seconds: float) -> None:
        """Replace the record under ``digest``; it expires after ``ttl_seconds``."""
        ...

    async def drop_key(self, digest: str) -> None:
        """Remove the record under ``digest`` (no error when there is none)."""
        ...


@runtime_checkable
class SupportsInspection(Protocol):
    """Capability: find a transaction's payload and keys, for ``ccat-buffering inspect``."""

    async def find_payload(self, transaction_id: str) -> str | None:
        """The transaction's payload wherever it waits (buffer, in flight, dead letters)."""
        ...

    async def transaction_keys(
        self, transaction_id: str, records: Sequence[tuple[str, str]]
    ) -> list[KeyInfo]:
        """Every live key that holds something of the transaction, with its TTL.

        Args:
            transaction_id: The transaction.
            records: ``(model, record id)`` of the records it writes.
        """
        ...


AuditProgress = Callable[[int, int], None]
"""``progress(done, total)`` of a key audit: keys looked at so far, and about how many in all."""


@runtime_checkable
class SupportsKeyAudit(Protocol):
    """Capability: a backend with keys that can be audited, for ``ccat-buffering keys audit``."""

    async def audit_keys(self, progress: AuditProgress | None = None) -> list[KeyInfo]:
        """Keys of the site that should have a TTL and have none: each one is a leak.

        Bounded structures and statuses of unfinished transactions are not listed.

        Args:
            progress: Called as the scan goes on with the keys looked at so
                far and about how many there are in all (both approximate).
        """
        ...

    async def persistence_warning(self) -> str | None:
        """Why the store could lose acknowledged writes on a restart, if it could."""
        ...


@dataclass(frozen=True)
class MemoryReport:
    """How full a store is, and how long it can keep buffering.

    Attributes:
        used_bytes: Memory the store uses now.
        limit_bytes: Its limit (``None``: unlimited).
        policy: What it does at the limit (Redis: ``maxmemory-policy``).
        bytes_per_transaction: Measured: the store's data divided by the
            transactions it holds (``None`` while it holds too few to tell).
        buffering_per_second: Transactions buffered per second lately
            (``None`` when too few are waiting to tell).
        full_in_seconds: At that rate, when the limit is reached.
    """

    used_bytes: int
    limit_bytes: int | None
    policy: str | None
    bytes_per_transaction: float | None = None
    buffering_per_second: float | None = None
    full_in_seconds: float | None = None


@runtime_checkable
class SupportsBufferHealth(Protocol):
    """Capability: a store that can say how safe and how full it is, for health checks."""

    async def memory_report(self) -> MemoryReport | None:
        """The store's memory and the projection at the recent rate of buffering."""
        ...

    async def buffer_warnings(self) -> list[str]:
        """What an operator must know of the store.

        An eviction policy that can lose writes (or one that could not be
        checked), no persistence, memory nearly full, writes being refused.
        Reads the store's settings afresh.
        """
        ...


@runtime_checkable
class SupportsBufferMarker(Protocol):
    """Capability: a durable store whose loss of state can be told from the outside.

    :mod:`ccat_buffering.observe.buffer_loss` keeps the marker's last sighting on the
    watching host's disk (and in the main database); a store that forgot it
    (a restart without persistence, a flush, a failover to a replica that was
    behind) no longer matches.
    """

    async def buffer_mark(self) -> tuple[str | None, int]:
        """The store's marker (``None`` if it has none) and its sequence counter.

        The counter only grows while the store keeps its state.
        """
        ...

    async def stamp_buffer(self, epoch: str, *, replace: bool = False) -> bool:
        """Set the marker; unless ``replace``, only where there is none.

        Returns:
            Whether it was set.
        """
        ...


@runtime_checkable
class SupportsAuditLog(Protocol):
    """Capability: a bounded log of what operators did to the site, kept with its buffer.

    It lives in the buffer's store, not in the main database, so that an
    action taken while the link is down (a replay, a purge) is recorded too.
    :mod:`ccat_buffering.buffer.audit` writes and reads it; entries are text (JSON)
    that the store does not parse.
    """

    async def append_audit(self, entry: str, keep: int) -> None:
        """Add ``entry`` as the newest, then keep only the newest ``keep`` entries.

        Raises:
            TypeError: ``entry`` is not text.
            ValueError: ``keep`` is not a positive integer.
        """
        ...

    async def audit_entries(self, limit: int | None = None) -> list[str]:
        """The entries, newest first, at most ``limit`` of them (``None``: all kept)."""
        ...


@runtime_checkable
class SupportsStatusPaging(Protocol):
    """Capability: a status store that pages a state's ids from a cursor.

    A page costs what a page costs (the console's listing), not a read of
    the ids before it.
    """

    async def ids_after(
        self, state: TransactionState, after: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """At most ``limit`` ids in ``state`` after the cursor ``after`` (``None``: the start).

        A cursor is a place in the state's order, not an id: when the id it
        was taken after has since left the state (or expired), the next page
        still starts right after that place, never over again nor empty.

        Returns:
            The ids, in :meth:`StatusStore.ids` order, and the cursor of the
            next page (opaque text), ``None`` when nothing follows.

        Raises:
            ValueError: ``after`` is not a cursor this store gave for ``state``.
        """
        ...


@runtime_checkable
class SupportsLetterPaging(Protocol):
    """Capability: a dead-letter store that pages its letters from a cursor.

    A page costs what a page costs (the console's listing), not a read of
    the letters before it.
    """

    async def letters_after(
        self, after: str | None, limit: int
    ) -> tuple[list[DeadLetter], str | None]:
        """At most ``limit`` letters after the cursor ``after`` (``None``: the first).

        Letters come in the order they arrived, as :meth:`DeadLetterStore.list`
        gives them. A cursor is a place in that order: when its letter was
        replayed or purged since, the next page still starts right after it.

        Returns:
            The letters and the cursor of the next page (opaque text),
            ``None`` when nothing follows.

        Raises:
            ValueError: ``after`` is not a cursor this store gave.
        """
        ...


@runtime_checkable
class SupportsChartSamples(Protocol):
    """Capability: the console's chart samples, a capped list kept with the buffer.

    So that the charts of the last hours survive a restart of the console;
    entries are text (JSON) that the store does not parse.
    """

    async def append_sample(self, entry: str, keep: int) -> None:
        """Add ``entry`` as the newest, then keep only the newest ``keep`` entries."""
        ...

    async def chart_samples(self, limit: int | None = None) -> list[str]:
        """The entries, newest first, at most ``limit`` of them (``None``: all kept)."""
        ...


@runtime_checkable
class SupportsOperatorPause(Protocol):
    """Capability: an operator's pause of the site's drain, kept with its buffer.

    Kept in the buffer's store so that it survives a worker's restart and
    every process of the site sees it; :mod:`ccat_buffering.drain.operator_pause`
    writes and reads it. The note is text (JSON) that the store does not parse.
    """

    async def set_operator_pause(self, note: str | None) -> None:
        """Pause the drain with ``note``, or resume it (``None``)."""
        ...

    async def operator_pause(self) -> str | None:
        """The note of the pause in force, or ``None`` when the drain is not paused."""
        ...


@runtime_checkable
class SupportsBufferOrigin(Protocol):
    """Capability: a store that says where in its server's replication history it stands.

    With it, :mod:`ccat_buffering.observe.buffer_loss` tells a failover that kept
    everything seen (the new master holds its old master's history past the
    last sighting) from one that lost some, and ignores a look at a master
    that another has replaced.
    """

    async def buffer_origin(self) -> BufferOrigin:
        """The marker, the counter and the replication history, read together.

        Raises:
            BackendUnavailableError: The store cannot be reached, or the node
                that answered is no longer a master.
        """
        ...
