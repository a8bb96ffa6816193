"""The Redis backend: every store of one site in Redis, each change one atomic call.

Writes go through Lua scripts (:mod:`ccat_buffering_redis.scripts`): a
``Backend.atomic()`` group is one ``EVALSHA`` whatever it holds, and groups
that concurrent callers close at the same moment are coalesced into one call
(each still applies whole). Every key lives under ``site:{<site>}:``, one
Redis Cluster slot per site. Redis errors are translated at this boundary:
nothing from ``redis.*`` leaks out.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
import json
import logging
import math
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ccat_buffering._checks import check_duration, check_payload, check_status, check_writes
from ccat_buffering._closing import AsyncClosing
from ccat_buffering.errors import (
    BackendError,
    BackendFullError,
    BackendUnavailableError,
    ConfigurationError,
)
from ccat_buffering.models import TransactionState, TransactionStatus, utc_now
from ccat_buffering.protocols import (
    BufferStats,
    CachedRecord,
    CacheWrite,
    Claim,
    DeadLetter,
    KeyInfo,
    LeaseInfo,
    MemoryReport,
)
from ccat_buffering_redis import scripts
from ccat_buffering_redis._connect import open_client
from ccat_buffering_redis._memory import (
    RECHECK_SECONDS,
    MemoryInfo,
    config_values,
    eviction_problem,
    memory_warnings,
    parse_memory,
)
from ccat_buffering_redis.compression import check_compression, entry_bytes, entry_text
from ccat_buffering_redis.keys import SiteKeys

__all__ = ["RedisBackend"]

Client = Redis | RedisCluster

MAX_GROUPS_PER_CALL = 256
MAX_IN_FLIGHT = 2

log = logging.getLogger(__name__)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


_JSON = json.JSONEncoder(separators=(",", ":"))
_quoted = json.encoder.encode_basestring_ascii
_STATUS_DROP = {"transaction_id"}


def _value_json(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"))``, without its per-call setup for scalars."""
    kind = type(value)
    if kind is str:
        return _quoted(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    if kind is dict and len(value) == 1:
        # A tagged value ({"$datetime": "..."}): the commonest dict by far.
        ((key, inner),) = value.items()
        if type(key) is str and type(inner) is str:
            return "{" + _quoted(key) + ":" + _quoted(inner) + "}"
    return _JSON.encode(value)


def _status_json(status: TransactionStatus) -> str:
    # The key names the transaction and defaults are restored on reading: store neither.
    return status.model_dump_json(exclude=_STATUS_DROP, exclude_defaults=True)


def _status_of(transaction_id: str, raw: bytes | str) -> TransactionStatus | None:
    # The key holds the JSON, then (after a newline) the records the transaction
    # wrote; records without a status (a cache write alone) are no status.
    # A status in a bucketed state index starts with its sequence number (see _state_index).
    text = _text(raw).partition("\n")[0].lstrip("0123456789")
    if not text:
        return None
    head = '{"transaction_id":' + _quoted(transaction_id)
    return TransactionStatus.model_validate_json(
        head + ("," if text[1:2] != "}" else "") + text[1:]
    )


SEP = "\x1f"
"""Ends each token of an ``APPLY`` frame (see :mod:`ccat_buffering_redis.scripts`)."""


@dataclass(frozen=True, slots=True)
class Op:
    """One staged operation of an ``APPLY`` frame.

    Attributes:
        text: Its tokens, each ended by :data:`SEP`.
        tokens: How many tokens ``text`` holds, the operation's name included.
        blobs: Text from outside the library, sent as arguments of their own.
        models: The models whose records it writes (cache writes).
    """

    text: str
    tokens: int
    blobs: tuple[str | bytes, ...] = ()
    models: tuple[str, ...] = ()

    @property
    def buffers(self) -> bool:
        """Whether the operation needs new memory: it buffers (a push, cache writes)."""
        return self.text.startswith(("push" + SEP, "cache" + SEP))


def _op(*tokens: str, blobs: tuple[str | bytes, ...] = ()) -> Op:
    return Op(SEP.join(tokens) + SEP, len(tokens), blobs)


def _inline(text: str, what: str) -> str:
    """``text``, checked to be safe as a token of the frame."""
    if SEP in text:
        raise ValueError(f"{what} {text!r} holds a control character (\\x1f)")
    return text


def _status_op(status: TransactionStatus, ttl_seconds: float) -> Op:
    transaction_id = _inline(status.transaction_id, "transaction id")
    score, member = "", transaction_id
    if status.state is TransactionState.COMMITTED:
        lsn = -1 if status.commit_lsn is None else int(status.commit_lsn)
        score = str(lsn >> 32) if lsn >= 0 else "-1"
        member = f"{max(lsn, 0) & 0xFFFFFFFF:08X}{transaction_id}"
    return _op(
        "status",
        transaction_id,
        _status_json(status),
        str(status.state),
        str(_ms(ttl_seconds)),
        score,
        member,
    )


def record_text(fields: Mapping[str, Any], record_id: str) -> str:
    """A buffered record's field lines: ``<field>=<JSON value>``, one per field.

    A field whose value is the record's id as text (its key, most often) is
    stored as ``<field>=``: the key already holds that text.
    """
    folded = '"' + record_id + '"'
    lines = []
    for name, value in fields.items():
        text = _value_json(value)
        lines.append(name + "=" + ("" if text == folded else text))
    return "\n".join(lines)


def record_head(head: str) -> tuple[bool, bool, tuple[str, ...]]:
    """Created, deleted and the transactions, from a record's ``@<c><d><seq>:<tx>,<tx>`` line."""
    txs = head.partition(":")[2]
    return head[1:2] == "1", head[2:3] == "1", tuple(t for t in txs.split(",") if t)


def field_prefix(name: str, value: Any) -> bytes:
    """How the field index (``fields:<Model>``) starts the entries of ``name == value``."""
    text = _value_json(value).encode()
    if len(text) > 64:
        text = text[:56] + b"#" + str(len(text)).encode()
    return name.encode() + b"=" + text + b"\0"


def _cache_op(transaction_id: str, writes: Sequence[CacheWrite], ttl_seconds: float) -> Op:
    tokens = ["cache", _inline(transaction_id, "transaction id"), str(_ms(ttl_seconds))]
    tokens.append(str(len(writes)))
    for write in writes:
        tokens += (
            write.model,
            write.record_id,
            str(write.kind),
            record_text(write.fields, write.record_id),
        )
    op = _op(*tokens)
    return Op(op.text, op.tokens, models=tuple(dict.fromkeys(w.model for w in writes)))


def _retry_op(receipts: Sequence[str], delay_seconds: float) -> Op:
    check_duration(delay_seconds, "delay_seconds")
    delay = 0 if delay_seconds == 0 else _ms(delay_seconds)
    return _op("retry", str(delay), str(len(receipts)), blobs=tuple(receipts))


def _dead_op(receipt: str, reason: str, transaction_id: str | None) -> Op:
    return _op("dead", blobs=(receipt, reason, transaction_id or ""))


def _release_op(transaction_ids: Sequence[str]) -> Op:
    ids = [_inline(t, "transaction id") for t in transaction_ids]
    return _op("release", str(len(ids)), *ids)


def _wire(groups: list[list[Op]]) -> list[str | bytes]:
    """The ``APPLY`` script's arguments after the prefix: the frame, then the blobs."""
    parts = [str(len(groups)), SEP]
    blobs: list[str | bytes] = []
    for ops in groups:
        parts += (str(sum(op.tokens for op in ops)), SEP)
        parts += (str(sum(len(op.blobs) for op in ops)), SEP)
        for op in ops:
            parts.append(op.text)
            blobs += op.blobs
    return ["".join(parts), *blobs]


def _take_compression(url: str) -> tuple[str, str | None]:
    """Split the ``compression`` query parameter off a backend URL (the rest unchanged)."""
    url, value = _take_parameter(url, "compression")
    return url, value or None


def _take_parameter(url: str, name: str) -> tuple[str, str | None]:
    """Split one of the library's query parameters off a backend URL (the rest unchanged)."""
    base, mark, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k != name]
    if not mark or len(kept) == len(pairs):
        return url, None
    value = [v for k, v in pairs if k == name][-1]
    return (base + "?" + urlencode(kept) if kept else base), value


class _Coalescer:
    """Sends the groups that callers close together in one script call.

    A caller that finds the coalescer idle sends its group at once. Otherwise
    its group waits until the event loop's current turn ends, so that the
    groups of callers woken together (by the reply to the last call, say) go
    in one call. Up to ``MAX_IN_FLIGHT`` calls run at a time, so that preparing the
    next call overlaps Redis running the last; groups that arrive while every
    slot is busy wait and go together in the next call. Each group still
    applies whole; its result or error reaches its own caller, who awaits it,
    so each caller's groups apply in the order it closed them. A caller
    cancelled before its group was sent has its group dropped, unwritten.
    """

    def __init__(
        self, run: Callable[[list[list[Op]]], Awaitable[list[int | BackendError]]]
    ) -> None:
        self._run = run
        self._pending: list[tuple[list[Op], asyncio.Future[int]]] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, ops: list[Op]) -> int:
        loop = asyncio.get_running_loop()
        if not (self._in_flight or self._pending or self._scheduled):
            # Nobody else is writing: send at once, without the wait for company.
            self._in_flight += 1
            try:
                (result,) = await self._run([ops])
            finally:
                self._in_flight -= 1
                if self._pending:
                    self._schedule(loop)
            if isinstance(result, BackendError):
                raise result
            return result
        future: asyncio.Future[int] = loop.create_future()
        self._pending.append((ops, future))
        self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        self._pending = [entry for entry in self._pending if not entry[1].done()]
        while self._pending and self._in_flight < MAX_IN_FLIGHT:
            # Share what waits among the free slots: while Redis runs one call,
            # the callers of the other, answered first, prepare their next groups.
            share = -(-len(self._pending) // (MAX_IN_FLIGHT - self._in_flight))
            size = min(share, MAX_GROUPS_PER_CALL)
            batch = self._pending[:size]
            del self._pending[:size]
            self._in_flight += 1
            task = asyncio.ensure_future(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[list[Op], asyncio.Future[int]]]) -> None:
        # A caller may have been cancelled since its group was handed to this task.
        batch = [entry for entry in batch if not entry[1].done()]
        try:
            results = await self._run([ops for ops, _ in batch]) if batch else []
        except BaseException as exc:
            for _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BackendError):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            if self._pending:
                self._schedule(asyncio.get_running_loop())


class _Part:
    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._keys = backend.keys


class RedisBufferStore(_Part):
    """:class:`~ccat_buffering.protocols.BufferStore` in Redis."""

    async def push(self, payloads: Sequence[str]) -> None:
        """See :meth:`ccat_buffering.protocols.BufferStore.push`."""
        for payload in payloads:
            check_payload(payload)
        if payloads:
            compression = self._backend.compression
            await self._backend.apply(
                [_op("push", blobs=(entry_bytes(p, compression),)) for p in payloads]
            )

    async def claim(self, count: int, lease_seconds: float) -> list[Claim]:
        """See :meth:`ccat_buffering.protocols.BufferStore.claim`."""
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        check_duration(lease_seconds, "lease_seconds")
        reply = await self._backend.script("claim", count, _ms(lease_seconds))
        if not reply:
            return []
        deadline = int(reply[0]) / 1000
        return [
            Claim(_text(reply[i]), entry_text(reply[i + 1]), deadline)
            for i in range(1, len(reply), 2)
        ]

    async def ack(self, receipts: Sequence[str]) -> int:
        """See :meth:`ccat_buffering.protocols.BufferStore.ack`."""
        return await self._backend.apply([_op("ack", blobs=(r,)) for r in receipts])

    async def retry_later(self, receipts: Sequence[str], delay_seconds: float) -> int:
        """See :meth:`ccat_buffering.protocols.BufferStore.retry_later`."""
        return await self._backend.apply([_retry_op(receipts, delay_seconds)])

    async def dead_letter(
        self, receipt: str, reason: str, transaction_id: str | None = None
    ) -> bool:
        """See :meth:`ccat_buffering.protocols.BufferStore.dead_letter`."""
        return bool(await self._backend.apply([_dead_op(receipt, reason, transaction_id)]))

    async def recover(self, *, include_unexpired: bool = False) -> int:
        """See :meth:`ccat_buffering.protocols.BufferStore.recover`."""
        return int(await self._backend.script("recover", "1" if include_unexpired else "0"))

    async def stats(self) -> BufferStats:
        """See :meth:`ccat_buffering.protocols.BufferStore.stats`."""
        now, depth, in_flight, letters, hold = await self._backend.script("buffer_stats")
        held = (int(now) + int(hold)) / 1000 if int(hold) > 0 else None
        return BufferStats(int(depth), int(in_flight), int(letters), held)


class RedisDeadLetterStore(_Part):
    """:class:`~ccat_buffering.protocols.DeadLetterStore` in Redis."""

    async def _letters(self, ids: list[str]) -> list[DeadLetter]:
        if not ids:
            return []
        letters = []
        for lid, payload, meta in await self._backend.script("letters_get", *ids):
            info = json.loads(meta)
            letters.append(
                DeadLetter(
                    _text(lid),
                    entry_text(payload),
                    info["reason"],
                    info["at"] / 1000,
                    info["tx"] or None,
                )
            )
        return letters

    async def list(self, offset: int = 0, limit: int | None = None) -> list[DeadLetter]:
        """See :meth:`ccat_buffering.protocols.DeadLetterStore.list`."""
        stop = -1 if limit is None else offset + limit - 1
        if limit == 0:
            return []
        with self._backend.translate():
            raw = await self._backend.client.zrange(self._keys.letter_order, offset, stop)
        return await self._letters([_text(r) for r in raw])  # type: ignore[arg-type]

    async def get(self, letter_id: str) -> DeadLetter | None:
        """See :meth:`ccat_buffering.protocols.DeadLetterStore.get`."""
        found = await self._letters([letter_id])
        return found[0] if found else None

    async def replay(self, letter_ids: Sequence[str] | None = None) -> builtins.list[DeadLetter]:
        """See :meth:`ccat_buffering.protocols.DeadLetterStore.replay`."""
        selector = "*" if letter_ids is None else json.dumps(list(letter_ids))
        wanted = await self.list() if letter_ids is None else await self._letters(list(letter_ids))
        by_id = {letter.letter_id: letter for letter in wanted}
        done = await self._backend.script("letters_replay", selector)
        return [by_id[_text(lid)] for lid in done if _text(lid) in by_id]

    async def purge(self, letter_ids: Sequence[str] | None = None) -> int:
        """See :meth:`ccat_buffering.protocols.DeadLetterStore.purge`."""
        selector = "*" if letter_ids is None else json.dumps(list(letter_ids))
        return int(await self._backend.script("letters_purge", selector))


class RedisStatusStore(_Part):
    """:class:`~ccat_buffering.protocols.StatusStore` in Redis."""

    async def get(self, transaction_id: str) -> TransactionStatus | None:
        """See :meth:`ccat_buffering.protocols.StatusStore.get`."""
        return (await self.get_many([transaction_id]))[0]

    async def get_many(self, transaction_ids: Sequence[str]) -> list[TransactionStatus | None]:
        """See :meth:`ccat_buffering.protocols.StatusStore.get_many`."""
        if not transaction_ids:
            return []
        with self._backend.translate():
            raw = await self._backend.client.mget([self._keys.status(t) for t in transaction_ids])
        return [
            None if r is None else _status_of(t, r)
            for t, r in zip(transaction_ids, raw, strict=True)
        ]

    async def put(self, status: TransactionStatus, ttl_seconds: float) -> None:
        """See :meth:`ccat_buffering.protocols.StatusStore.put`."""
        check_status(status)
        check_duration(ttl_seconds, "ttl_seconds")
        await self._backend.apply([_status_op(status, ttl_seconds)])

    async def ids(self, state: TransactionState, limit: int | None = None) -> list[str]:
        """See :meth:`ccat_buffering.protocols.StatusStore.ids`."""
        if limit == 0:
            return []
        reply = await self._backend.script("status_ids", str(TransactionState(state)), limit or -1)
        return [_text(r) for r in reply]

    async def counts(self) -> dict[TransactionState, int]:
        """See :meth:`ccat_buffering.protocols.StatusStore.counts`."""
        states = list(TransactionState)
        reply = await self._backend.script("status_counts", *(str(s) for s in states))
        return {state: int(n) for state, n in zip(states, reply, strict=True)}


class RedisCacheStore(_Part):
    """:class:`~ccat_buffering.protocols.CacheStore` in Redis."""

    async def write(
        self, transaction_id: str, writes: Sequence[CacheWrite], ttl_seconds: float
    ) -> None:
        """See :meth:`ccat_buffering.protocols.CacheStore.write`."""
        check_writes(transaction_id, writes)
        check_duration(ttl_seconds, "ttl_seconds")
        await self._backend.apply([_cache_op(transaction_id, writes, ttl_seconds)])

    @staticmethod
    def _record(model: str, record_id: str, raw: bytes, ttl_ms: int, now: float) -> CachedRecord:
        head, _, lines = _text(raw).partition("\n")
        fields = {}
        for line in lines.split("\n") if lines else ():
            name, _, value = line.partition("=")
            fields[name] = json.loads(value) if value else record_id
        return CachedRecord(
            model,
            record_id,
            fields,
            *record_head(head),
            now + max(ttl_ms, 0) / 1000,
        )

    async def get(self, model: str, record_id: str) -> CachedRecord | None:
        """See :meth:`ccat_buffering.protocols.CacheStore.get`."""
        now, ttl, raw = await self._backend.script("cache_get", model, record_id)
        if not raw:
            return None
        return self._record(model, record_id, raw, int(ttl), int(now) / 1000)

    async def list(self, model: str) -> list[CachedRecord]:
        """See :meth:`ccat_buffering.protocols.CacheStore.list`."""
        now_ms, rows = await self._backend.script("cache_list", model)
        now = int(now_ms) / 1000
        return [self._record(model, _text(rid), raw, int(ttl), now) for rid, ttl, raw in rows]

    async def get_many(
        self, model: str, record_ids: Sequence[str]
    ) -> builtins.list[CachedRecord | None]:
        """See :meth:`ccat_buffering.protocols.CacheStore.get_many`."""
        if not record_ids:
            return []
        now_ms, rows = await self._backend.script("cache_get_many", model, *record_ids)
        now = int(now_ms) / 1000
        return [
            self._record(model, rid, raw, int(ttl), now) if raw else None
            for rid, (ttl, raw) in zip(record_ids, rows, strict=True)
        ]

    async def find(self, model: str, equals: Mapping[str, Any]) -> builtins.list[CachedRecord]:
        """See :meth:`ccat_buffering.protocols.CacheStore.find`."""
        if not equals:
            return []
        pairs = [(name, field_prefix(name, value)) for name, value in equals.items()]
        now_ms, rows = await self._backend.script("cache_find", model, *itertools.chain(*pairs))
        now = int(now_ms) / 1000
        records = [self._record(model, _text(rid), raw, int(ttl), now) for rid, ttl, raw in rows]
        # Long values share an entry with those of the same start and length,
        # and a record that expired and was written again may have kept one.
        return [
            r
            for r in records
            if any(name in r.fields and r.fields[name] == value for name, value in equals.items())
        ]

    async def created_by(self, model: str, record_id: str) -> str | None:
        """See :meth:`ccat_buffering.protocols.CacheStore.created_by`."""
        return await self._backend.creator(model, record_id)

    async def extend(self, transaction_ids: Sequence[str], ttl_seconds: float) -> int:
        """See :meth:`ccat_buffering.protocols.CacheStore.extend`."""
        check_duration(ttl_seconds, "ttl_seconds")
        if not transaction_ids:
            return 0
        return int(await self._backend.script("cache_extend", _ms(ttl_seconds), *transaction_ids))

    async def release(self, transaction_ids: Sequence[str]) -> int:
        """See :meth:`ccat_buffering.protocols.CacheStore.release`."""
        if not transaction_ids:
            return 0
        return await self._backend.apply([_release_op(transaction_ids)])


class RedisProcessorLease(_Part):
    """:class:`~ccat_buffering.protocols.ProcessorLease` in Redis (``SET PX`` with a token)."""

    async def acquire(self, holder: str, ttl_seconds: float) -> bool:
        """See :meth:`ccat_buffering.protocols.ProcessorLease.acquire`."""
        check_duration(ttl_seconds, "ttl_seconds")
        return bool(await self._backend.script("lease_acquire", holder, _ms(ttl_seconds)))

    async def renew(self, holder: str, ttl_seconds: float) -> bool:
        """See :meth:`ccat_buffering.protocols.ProcessorLease.renew`."""
        check_duration(ttl_seconds, "ttl_seconds")
        return bool(await self._backend.script("lease_renew", holder, _ms(ttl_seconds)))

    async def release(self, holder: str) -> bool:
        """See :meth:`ccat_buffering.protocols.ProcessorLease.release`."""
        return bool(await self._backend.script("lease_release", holder))

    async def current(self) -> LeaseInfo | None:
        """See :meth:`ccat_buffering.protocols.ProcessorLease.current`."""
        now, holder, ttl = await self._backend.script("lease_current")
        if not holder or int(ttl) < 0:
            return None
        return LeaseInfo(_text(holder), (int(now) + int(ttl)) / 1000)

    async def publish_report(self, report: str, ttl_seconds: float) -> None:
        """See :meth:`ccat_buffering.protocols.SupportsProcessorReports.publish_report`."""
        check_duration(ttl_seconds, "ttl_seconds")
        await self._backend.script("publish_report", report, _ms(ttl_seconds))

    async def processor_report(self) -> str | None:
        """See :meth:`ccat_buffering.protocols.SupportsProcessorReports.processor_report`."""
        with self._backend.translate():
            value = await self._backend.client.get(self._keys.processor)
        return None if value is None else _text(value)


class RedisWriteBatch:
    """:class:`~ccat_buffering.protocols.WriteBatch` that stages script operations.

    Args:
        compression: How to store queue entries (see :mod:`ccat_buffering_redis.compression`).
    """

    def __init__(self, compression: str | None = None) -> None:
        self.ops: list[Op] = []
        self.compression = compression

    def push(self, payload: str) -> None:
        """Stage a push."""
        check_payload(payload)
        self.ops.append(_op("push", blobs=(entry_bytes(payload, self.compression),)))

    def ack(self, receipt: str) -> None:
        """Stage an ack."""
        self.ops.append(_op("ack", blobs=(receipt,)))

    def retry_later(self, receipts: Sequence[str], delay_seconds: float) -> None:
        """Stage a retry."""
        self.ops.append(_retry_op(receipts, delay_seconds))

    def dead_letter(self, receipt: str, reason: str, transaction_id: str | None) -> None:
        """Stage a move to the dead letters."""
        self.ops.append(_dead_op(receipt, reason, transaction_id))

    def replay(self, letter_id: str) -> None:
        """Stage the replay of one letter."""
        self.ops.append(_op("replay", blobs=(letter_id,)))

    def put_status(self, status: TransactionStatus, ttl_seconds: float) -> None:
        """Stage a status."""
        check_status(status)
        check_duration(ttl_seconds, "ttl_seconds")
        self.ops.append(_status_op(status, ttl_seconds))

    def write_cache(
        self, transaction_id: str, writes: Sequence[CacheWrite], ttl_seconds: float
    ) -> None:
        """Stage cache writes."""
        writes = list(writes)
        check_writes(transaction_id, writes)
        check_duration(ttl_seconds, "ttl_seconds")
        self.ops.append(_cache_op(transaction_id, writes, ttl_seconds))

    def release_cache(self, transaction_ids: Sequence[str]) -> None:
        """Stage a cache release."""
        self.ops.append(_release_op(transaction_ids))


_SCRIPTS = scripts.SCRIPTS


class RedisBackend(AsyncClosing):
    """Every store of one site, in Redis.

    Args:
        client: A redis-py asyncio client (``Redis`` or ``RedisCluster``); the
            backend does not close it.
        site: The site's name (a plain identifier).
        coalesce: Send atomic groups that close together in one call.
        compression: ``"zlib"`` to store queue entries compressed (see
            :mod:`ccat_buffering_redis.compression`); ``None`` for plain text.
        where: How to name the server in error messages (password masked).
        allow_eviction: Buffer even on a Redis whose ``maxmemory-policy``
            evicts keys. Eviction loses acknowledged transactions without a
            word: without this, buffering there raises ``ConfigurationError``.
        indexed_fields: Fields to index for ``CacheStore.find()`` from the
            first write of their model on, by model name. Any other field is
            indexed by the first ``find()`` on it (see
            :mod:`ccat_buffering_redis._field_index`); naming it here only
            spares that first call the scan.

    Raises:
        ConfigurationError: ``compression`` names no known compression.
    """

    def __init__(
        self,
        client: Client,
        *,
        site: str,
        coalesce: bool = True,
        compression: str | None = None,
        where: str | None = None,
        allow_eviction: bool = False,
        indexed_fields: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.keys = SiteKeys(site)
        self._unlearned = {m: tuple(f) for m, f in (indexed_fields or {}).items() if f}
        self.allow_eviction = allow_eviction
        self._policy_checked_at = -math.inf
        self._eviction_problem: str | None = None
        self.policy_warning: str | None = None
        """Why the eviction policy is not known to be safe, if it is not."""
        self.refused_full_at: float | None = None
        """When (monotonic) a write was last refused as out of memory."""
        self.compression = check_compression(compression)
        if compression is not None and client.get_encoder().decode_responses:
            raise ConfigurationError(
                "compression needs a client that returns bytes: open it without "
                "decode_responses=True"
            )
        self.site = site
        self.client = client
        self.where = where or self._describe(client)
        self._owns_client = False
        self._scripts = {name: client.register_script(lua) for name, lua in _SCRIPTS.items()}
        self._coalescer = _Coalescer(self._apply_groups) if coalesce else None
        self.buffer = RedisBufferStore(self)
        self.dead_letters = RedisDeadLetterStore(self)
        self.status = RedisStatusStore(self)
        self.cache = RedisCacheStore(self)
        self.lease = RedisProcessorLease(self)

    @staticmethod
    def _describe(client: Client) -> str:
        if isinstance(client, RedisCluster):
            return "a Redis Cluster"
        kwargs = client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return f"redis at {kwargs['path']}"
        return f"redis at {kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        site: str,
        coalesce: bool = True,
        compression: str | None = None,
        allow_eviction: bool = False,
        indexed_fields: Mapping[str, Iterable[str]] | None = None,
        **options: Any,
    ) -> RedisBackend:
        """Open a backend that owns its client, for a Redis URL.

        Args:
            url: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``
                or ``redis+cluster://``.
                A query parameter ``compression=zlib`` turns on compression
                (it is not passed on to redis-py).
            site: The site's name.
            coalesce: Send atomic groups that close together in one call.
            compression: As in the constructor; the URL's parameter, if it has
                one, wins.
            allow_eviction: As in the constructor; a URL parameter
                ``allow_eviction=true`` turns it on too.
            indexed_fields: As in the constructor.
            **options: Passed to the redis-py client. Connect and socket
                timeouts are on by default (see :func:`~ccat_buffering_redis._connect.open_client`).

        Returns:
            The backend; ``aclose()`` closes the client.

        Raises:
            ConfigurationError: The URL is not understood, or names an unknown
                compression.
        """
        SiteKeys(site)
        url, in_url = _take_compression(url)
        compression = check_compression(in_url or compression)
        url, evict = _take_parameter(url, "allow_eviction")
        if evict is not None:
            if evict.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigurationError(
                    f"allow_eviction={evict!r} in the backend URL: use true or false"
                )
            allow_eviction = allow_eviction or evict.lower() in ("true", "1", "yes")
        client, where = open_client(url, **options)
        backend = cls(
            client,
            site=site,
            coalesce=coalesce,
            compression=compression,
            where=where,
            allow_eviction=allow_eviction,
            indexed_fields=indexed_fields,
        )
        backend._owns_client = True
        return backend

    @contextmanager
    def translate(self) -> Iterator[None]:
        """Turn redis-py's errors into the library's, naming the server."""
        try:
            yield
        except (redis.exceptions.TimeoutError, TimeoutError) as exc:
            raise BackendUnavailableError(
                f"{self.where} did not answer in time ({exc or 'timed out'})"
            ) from exc
        except (
            redis.exceptions.ConnectionError,
            redis.exceptions.ClusterDownError,
            redis.exceptions.RedisClusterException,
            OSError,
        ) as exc:
            raise BackendUnavailableError(f"{self.where} cannot be reached: {exc}") from exc
        except redis.exceptions.RedisError as exc:
            if isinstance(exc, redis.exceptions.OutOfMemoryError) or str(exc).startswith("OOM"):
                self.refused_full_at = time.monotonic()
                raise BackendFullError(self._full_message(str(exc))) from exc
            raise BackendError(f"{self.where} refused the operation: {exc}") from exc

    def _full_message(self, detail: str) -> str:
        return (
            f"{self.where} is full and refuses new writes ({detail.rstrip('.')}); nothing of "
            "this write was stored. The drain still frees memory: submit again once it has "
            "drained, or raise maxmemory (see the Redis page of the docs)"
        )

    async def script(self, name: str, *args: Any) -> Any:
        """Run one of the backend's scripts for this site.

        Args:
            name: The script's name.
            *args: Its arguments after the key prefix.

        Returns:
            The script's reply.
        """
        with self.translate():
            return await self._scripts[name](
                keys=[self.keys.buffer], args=[self.keys.prefix, *args]
            )

    async def _apply_groups(self, groups: list[list[Op]]) -> list[int | BackendError]:
        try:
            reply = await self.script("apply", *_wire(groups))
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(
                f"{exc}: the write may or may not have been stored. Submitting the same "
                "transaction object again is safe: the ledger applies it once"
            ) from exc.__cause__
        results: list[int | BackendError] = []
        for item in reply:
            if not isinstance(item, bytes | str):
                results.append(int(item))
            elif (text := _text(item)).startswith("full: "):
                self.refused_full_at = time.monotonic()
                results.append(BackendFullError(self._full_message(text.removeprefix("full: "))))
            elif (text := _text(item)).startswith("failed: "):
                results.append(
                    BackendError(
                        f"{self.where} failed partway through a write group, which may be "
                        f"partly written: {text.removeprefix('failed: ')}"
                    )
                )
            else:
                # The script refused this group whole, before writing any of it.
                results.append(BackendError(f"{self.where} refused a write group: {text}"))
        return results

    async def apply(self, ops: list[Op]) -> int:
        """Apply one atomic group of operations.

        Returns:
            How many entries the group's operations touched.

        Raises:
            ConfigurationError: The group buffers and Redis evicts keys.
            BackendFullError: The group buffers and Redis is out of memory.
        """
        if time.monotonic() - self._policy_checked_at > RECHECK_SECONDS and any(
            op.buffers for op in ops
        ):
            await self.check_policy()
        if self._eviction_problem is not None and any(op.buffers for op in ops):
            raise ConfigurationError(self._eviction_problem)
        if self._coalescer is not None:
            result = await self._coalescer.submit(ops)
        else:
            (outcome,) = await self._apply_groups([ops])
            if isinstance(outcome, BackendError):
                raise outcome
            result = outcome
        if self._unlearned:
            await self._learn_configured(ops)
        return result

    async def _learn_configured(self, ops: list[Op]) -> None:
        """Index the ``indexed_fields`` of the models ``ops`` wrote, once per model."""
        for model in {m for op in ops for m in op.models if m in self._unlearned}:
            fields = self._unlearned.pop(model)
            try:
                await self.script("cache_learn", model, *fields)
            except BackendError as exc:
                # The write stands; find() learns the fields on its first call instead.
                log.warning("could not index %s of %s yet: %s", fields, model, exc)

    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[RedisWriteBatch]:
        """See :meth:`ccat_buffering.protocols.Backend.atomic`."""
        batch = RedisWriteBatch(self.compression)
        yield batch
        if batch.ops:
            await self.apply(batch.ops)

    # -- inspection and audit (capabilities for the operator's commands) ---

    async def _describe_keys(self, keys: Sequence[str]) -> list[KeyInfo]:
        infos = []
        with self.translate():
            for key in keys:
                ttl = await self.client.pttl(key)
                if ttl == -2:
                    continue  # gone, or expired meanwhile
                kind = _text(await self.client.type(key))
                infos.append(KeyInfo(key, kind, None if ttl < 0 else ttl / 1000))
        return infos

    async def find_payload(self, transaction_id: str) -> str | None:
        """See :meth:`ccat_buffering.protocols.SupportsInspection.find_payload`."""
        needle = f'"transaction_id":"{transaction_id}"'
        keys = self.keys
        with self.translate():
            letter = await self.client.hget(keys.letters, transaction_id)
            if letter is not None:
                return entry_text(letter)
            for raw in await self.client.hvals(keys.inflight):
                if needle in (text := entry_text(raw)):
                    return text
            length = await self.client.llen(keys.buffer)
            for start in range(0, length, 1000):
                for raw in await self.client.lrange(keys.buffer, start, start + 999):
                    if needle in (text := entry_text(raw)):
                        return text
        return None

    async def creator(self, model: str, record_id: str) -> str | None:
        """The transaction that creates a record, from its ID-cache entry.

        An entry ``1`` stands for the first of the record's transactions (see
        ``id_entry`` in :mod:`ccat_buffering_redis.scripts`); one MGET reads both.
        """
        with self.translate():
            entry, record = await self.client.mget(
                self.keys.ids(model, record_id), self.keys.buffered(model, record_id)
            )
        if entry is None or _text(entry) != "1":
            return None if entry is None else _text(entry)
        if record is None:
            return None
        txs = record_head(_text(record).partition("\n")[0])[2]
        return txs[0] if txs else None

    async def transaction_keys(
        self, transaction_id: str, records: Sequence[tuple[str, str]]
    ) -> list[KeyInfo]:
        """See :meth:`ccat_buffering.protocols.SupportsInspection.transaction_keys`."""
        keys = [self.keys.status(transaction_id)]
        with self.translate():
            for model, record_id in records:
                buffered = self.keys.buffered(model, record_id)
                value = await self.client.get(buffered)
                head = _text(value).partition("\n")[0] if value is not None else ""
                if transaction_id in record_head(head)[2]:
                    keys.append(buffered)
                if await self.creator(model, record_id) == transaction_id:
                    keys.append(self.keys.ids(model, record_id))
        return await self._describe_keys(keys)

    async def audit_keys(self) -> list[KeyInfo]:
        """See :meth:`ccat_buffering.protocols.SupportsKeyAudit.audit_keys`."""
        bounded = self.keys.bounded()
        leaks = []
        with self.translate():
            async for raw in self.client.scan_iter(match=self.keys.pattern(), count=1000):
                key = _text(raw)
                if key in bounded or self.keys.is_bounded(key) or await self.client.pttl(key) != -1:
                    continue
                transaction_id = self.keys.status_id(key)
                if transaction_id is not None:
                    status = await self.status.get(transaction_id)
                    if status is not None and not status.state.is_terminal:
                        continue
                leaks.append(key)
        return await self._describe_keys(leaks)

    async def check_policy(self) -> str | None:
        """Read ``maxmemory-policy``; note why buffering here could lose data.

        Called when the backend first buffers, at most every
        :data:`~ccat_buffering_redis._memory.RECHECK_SECONDS` after, and on
        each health check.

        Returns:
            Why buffering is refused (an evicting policy not allowed), or ``None``.
        """
        self._policy_checked_at = time.monotonic()
        try:
            with self.translate():
                reply = await self.client.config_get("maxmemory-policy")
        except BackendUnavailableError:
            self._policy_checked_at = -math.inf
            raise
        except BackendError as exc:
            reply, refused = None, str(exc.__cause__ or exc)
        else:
            refused = "it gave no value"
        policies = config_values(reply)
        if not policies:
            warning = (
                f"{self.where}: the eviction policy could not be checked (CONFIG GET "
                f"maxmemory-policy: {refused}); make sure it is noeviction, or buffered "
                "transactions may be evicted"
            )
            if warning != self.policy_warning:
                log.warning("%s", warning)
            self.policy_warning, self._eviction_problem = warning, None
            return None
        self._eviction_problem = eviction_problem(self.where, policies, self.allow_eviction)
        evicting = sorted({p for p in policies if p != "noeviction"})
        self.policy_warning = self._eviction_problem
        if evicting and self.allow_eviction:
            self.policy_warning = (
                f"{self.where} evicts keys (maxmemory-policy {', '.join(evicting)}) and "
                "allow_eviction is set: buffered transactions are lost when memory runs out"
            )
        return self._eviction_problem

    async def memory(self) -> MemoryInfo | None:
        """The server's memory (``INFO memory``), or ``None`` where INFO is refused."""
        try:
            with self.translate():
                reply = await self.client.info("memory")
        except BackendUnavailableError:
            raise
        except BackendError:
            return None
        return parse_memory(reply)

    async def memory_report(self) -> MemoryReport | None:
        """See :meth:`ccat_buffering.protocols.SupportsBufferHealth.memory_report`."""
        info = await self.memory()
        if info is None:
            return None
        stats = await self.buffer.stats()
        held = stats.depth + stats.in_flight
        # The data set over what the site holds: an upper bound where other
        # data shares the server, and too rough below a hundred transactions.
        per_tx = info.dataset / held if held >= 100 else None
        rate = await self._buffering_rate()
        full_in = None
        if info.limit and per_tx and rate:
            full_in = max(info.limit - info.used, 0) / (per_tx * rate)
        return MemoryReport(
            info.used, info.limit or None, info.policy or None, per_tx, rate, full_in
        )

    async def _buffering_rate(self, sample: int = 100) -> float | None:
        """Transactions a second, from when the newest waiting ones were buffered."""
        listed = self.keys.state(TransactionState.BUFFERED)
        newest: list[Any] = []
        with self.translate():
            buckets: list[Any] = await self.client.zrange(listed, -8, -1)
            for bucket in reversed(buckets):
                newest[:0] = await self.client.zrange(f"{listed}:{_text(bucket)}", 0, -1)
                if len(newest) >= sample:
                    break
        ids = [_text(t) for t in newest[-sample:] if isinstance(t, bytes | str)]
        if len(ids) < 10:
            return None
        statuses = [s for s in await self.status.get_many(ids) if s is not None]
        if len(statuses) < 10:
            return None
        span = (utc_now() - min(s.created_at for s in statuses)).total_seconds()
        return len(statuses) / span if span > 0 else None

    async def buffer_warnings(self) -> list[str]:
        """See :meth:`ccat_buffering.protocols.SupportsBufferHealth.buffer_warnings`."""
        warnings = []
        await self.check_policy()
        if self.policy_warning:
            warnings.append(self.policy_warning)
        persistence = await self.persistence_warning()
        if persistence:
            warnings.append(persistence)
        info = await self.memory()
        refusing = self.refused_full_at is not None and (
            time.monotonic() - self.refused_full_at < RECHECK_SECONDS
        )
        if not refusing:
            # Another process may be the one refused: ask Redis itself.
            refusing = "OOM" in _text(await self.script("refuses_writes"))
        if info is not None:
            warnings += memory_warnings(self.where, info, refusing)
        elif refusing:
            warnings.append(f"{self.where} refused writes as out of memory in the last 30 s")
        return warnings

    async def buffer_mark(self) -> tuple[str | None, int]:
        """See :meth:`ccat_buffering.protocols.SupportsBufferMarker.buffer_mark`."""
        with self.translate():
            epoch, seq = await self.client.mget([self.keys.epoch, self.keys.seq])
        return (None if epoch is None else _text(epoch)), int(seq or 0)

    async def stamp_buffer(self, epoch: str, *, replace: bool = False) -> bool:
        """See :meth:`ccat_buffering.protocols.SupportsBufferMarker.stamp_buffer`."""
        return bool(await self.script("stamp_buffer", epoch, "1" if replace else "0"))

    async def persistence_warning(self) -> str | None:
        """See :meth:`ccat_buffering.protocols.SupportsKeyAudit.persistence_warning`."""
        try:
            with self.translate():
                reply = await self.client.config_get("appendonly")
        except BackendError:
            return None  # CONFIG may be disabled (a managed Redis): nothing to say
        values = config_values(reply)
        if values and all(v == "no" for v in values):
            return (
                f"{self.where} keeps no append-only file (appendonly no): a restart loses "
                "acknowledged writes; enable AOF for a secondary site"
            )
        return None

    async def aclose(self) -> None:
        """Close the client if the backend opened it."""
        if self._owns_client:
            self._owns_client = False
            with self.translate():
                await self.client.aclose()

    def __repr__(self) -> str:
        return f"RedisBackend(site={self.site!r}, {self.where})"
