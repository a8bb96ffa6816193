"""The in-memory state of one site, and every write as one synchronous function.

Each store method and each staged write of ``atomic()`` runs one of these
functions without awaiting in between, so no other coroutine can observe a
half-done write: the event loop is the critical section.
"""

from __future__ import annotations

import bisect
import collections
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ccat_buffering.models import TransactionState, TransactionStatus
from ccat_buffering.protocols import CacheKind, CacheWrite, Claim, DeadLetter

Clock = Callable[[], float]


def _cursor(text: str, parts: int) -> tuple[int, ...]:
    """A cursor this store gave, read back: ``parts`` whole numbers."""
    numbers = text.split(" ")
    try:
        if len(numbers) != parts:
            raise ValueError(text)
        return tuple(int(n) for n in numbers)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a cursor this store gave: start from the first page"
        ) from None


def field_value_key(model: str, name: str, value: Any) -> tuple[str, str, str]:
    """The field index's key for ``name == value`` in ``model`` (values as JSON text)."""
    return model, name, json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass
class _InFlight:
    seq: int
    payload: str
    lease_expires_at: float


@dataclass
class _StatusEntry:
    status: TransactionStatus
    expires_at: float | None
    seq: int = 0  # when it was put: a page's cursor stays a place after the id moves on


@dataclass
class _Record:
    fields: dict[str, Any]
    created: bool
    deleted: bool
    transaction_ids: list[str]
    expires_at: float
    order: int = 0


@dataclass
class SiteState:
    """Everything one memory backend holds for its site."""

    clock: Clock
    queue: collections.deque[tuple[int, str]] = field(default_factory=collections.deque)
    next_seq: int = 0
    head_seq: int = 0
    claims_made: int = 0
    in_flight: dict[str, _InFlight] = field(default_factory=dict)
    held_until: float | None = None
    letters: dict[str, DeadLetter] = field(default_factory=dict)
    letter_seqs: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, _StatusEntry] = field(default_factory=dict)
    state_index: dict[TransactionState, dict[str, None]] = field(
        default_factory=lambda: {state: {} for state in TransactionState}
    )
    records: dict[tuple[str, str], _Record] = field(default_factory=dict)
    model_index: dict[str, dict[str, None]] = field(default_factory=dict)
    id_cache: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    written_by: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    field_index: dict[tuple[str, str, str], dict[str, None]] = field(default_factory=dict)
    records_written: int = 0
    lease: tuple[str, float] | None = None
    report: tuple[str, float] | None = None
    idempotency: dict[str, tuple[str, float]] = field(default_factory=dict)
    puts: int = 0  # statuses put and letters written, as the Redis counter numbers them

    # -- buffer ------------------------------------------------------------

    def push(self, payloads: Iterable[str]) -> None:
        for payload in payloads:
            self.queue.append((self.next_seq, payload))
            self.next_seq += 1

    def claim(self, count: int, lease_seconds: float) -> list[Claim]:
        now = self.clock()
        if self.held_until is not None:
            if now < self.held_until:
                return []
            self.held_until = None
        claims: list[Claim] = []
        expires = now + lease_seconds
        while self.queue and len(claims) < count:
            seq, payload = self.queue.popleft()
            # A new receipt at every claim: a stale holder cannot settle a later claim.
            self.claims_made += 1
            receipt = f"{seq}.{self.claims_made}"
            self.in_flight[receipt] = _InFlight(seq, payload, expires)
            claims.append(Claim(receipt, payload, expires))
        return claims

    def ack(self, receipts: Iterable[str]) -> int:
        return sum(self.in_flight.pop(r, None) is not None for r in receipts)

    def _return_to_head(self, entries: Iterable[_InFlight]) -> int:
        ordered = sorted(entries, key=lambda e: e.seq)
        for entry in reversed(ordered):
            self.queue.appendleft((entry.seq, entry.payload))
        return len(ordered)

    def retry_later(self, receipts: Iterable[str], delay_seconds: float) -> int:
        entries = [e for r in receipts if (e := self.in_flight.pop(r, None)) is not None]
        self.held_until = self.clock() + delay_seconds if delay_seconds > 0 else None
        return self._return_to_head(entries)

    def dead_letter(self, receipt: str, reason: str, transaction_id: str | None) -> bool:
        entry = self.in_flight.pop(receipt, None)
        if entry is None:
            return False
        letter_id = transaction_id or f"raw-{receipt}"
        self.letters.pop(letter_id, None)
        self.letters[letter_id] = DeadLetter(
            letter_id, entry.payload, reason, self.clock(), transaction_id
        )
        self.puts += 1
        self.letter_seqs[letter_id] = self.puts
        return True

    def recover(self, include_unexpired: bool) -> int:
        now = self.clock()
        expired = [
            r for r, e in self.in_flight.items() if include_unexpired or e.lease_expires_at <= now
        ]
        return self._return_to_head(self.in_flight.pop(r) for r in expired)

    # -- dead letters -------------------------------------------------------

    def replay(self, letter_ids: Sequence[str] | None) -> list[DeadLetter]:
        wanted = set(self.letters if letter_ids is None else letter_ids)
        replayed = [letter for lid, letter in self.letters.items() if lid in wanted]
        for letter in replayed:
            del self.letters[letter.letter_id]
            del self.letter_seqs[letter.letter_id]
        # To the head, the first of them first; numbered below everything queued
        # so that a recovery puts them back ahead of what was behind them.
        self.head_seq = min(self.head_seq, self.queue[0][0] if self.queue else 0)
        for letter in reversed(replayed):
            self.head_seq -= 1
            self.queue.appendleft((self.head_seq, letter.payload))
        return replayed

    def purge(self, letter_ids: Sequence[str] | None) -> int:
        wanted = list(self.letters) if letter_ids is None else letter_ids
        for lid in wanted:
            self.letter_seqs.pop(lid, None)
        return sum(self.letters.pop(lid, None) is not None for lid in wanted)

    def letters_after(self, after: str | None, limit: int) -> tuple[list[DeadLetter], str | None]:
        # Arrival numbers only grow, so the letters after a cursor are those
        # numbered above it, whether or not its own letter is still here.
        low = -1 if after is None else _cursor(after, 1)[0]
        following = [letter for lid, letter in self.letters.items() if self.letter_seqs[lid] > low]
        page = following[: max(limit, 0)]
        more = bool(page) and len(following) > len(page)
        return page, str(self.letter_seqs[page[-1].letter_id]) if more else None

    # -- status -------------------------------------------------------------

    def live_status(self, transaction_id: str) -> TransactionStatus | None:
        entry = self.statuses.get(transaction_id)
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= self.clock():
            del self.statuses[transaction_id]
            self.state_index[entry.status.state].pop(transaction_id, None)
            return None
        return entry.status

    def put_status(self, status: TransactionStatus, ttl_seconds: float) -> None:
        previous = self.statuses.get(status.transaction_id)
        if previous is not None:
            self.state_index[previous.status.state].pop(status.transaction_id, None)
        expires = self.clock() + ttl_seconds if status.state.is_terminal else None
        self.puts += 1
        self.statuses[status.transaction_id] = _StatusEntry(status, expires, self.puts)
        self.state_index[status.state][status.transaction_id] = None

    def status_ids(self, state: TransactionState) -> list[str]:
        ids = [tid for tid in list(self.state_index[state]) if self.live_status(tid)]
        if state is TransactionState.COMMITTED:
            ids.sort(key=lambda tid: self._commit_lsn(tid))
        return ids

    def _commit_lsn(self, transaction_id: str) -> int:
        lsn = self.statuses[transaction_id].status.commit_lsn
        return -1 if lsn is None else int(lsn)

    def _place(self, state: TransactionState, transaction_id: str) -> tuple[int, ...]:
        seq = self.statuses[transaction_id].seq
        if state is TransactionState.COMMITTED:
            return self._commit_lsn(transaction_id), seq
        return (seq,)

    def status_page(
        self, state: TransactionState, after: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """A page of ``state``'s ids after the cursor, as Redis' ``status_page.lua``.

        The cursor is the place of the page's last id (the number of its put;
        for ``committed``, its commit LSN first): a page goes on from that
        place even when that id has since left the state, as in Redis.
        """
        ids = self.status_ids(state)
        places = [self._place(state, tid) for tid in ids]
        start = 0
        if after is not None:
            place = _cursor(after, 2 if state is TransactionState.COMMITTED else 1)
            start = bisect.bisect_right(places, place)
        page = ids[start : start + max(limit, 0)]
        if not page or start + len(page) >= len(ids):
            return page, None
        return page, " ".join(str(n) for n in places[start + len(page) - 1])

    # -- cache --------------------------------------------------------------

    def live_record(self, key: tuple[str, str]) -> _Record | None:
        record = self.records.get(key)
        if record is not None and record.expires_at <= self.clock():
            self._drop_record(key)
            return None
        return record

    def _drop_record(self, key: tuple[str, str]) -> None:
        record = self.records.pop(key, None)
        if record is None:
            return
        self.model_index.get(key[0], {}).pop(key[1], None)
        self.unindex_fields(key, record.fields)
        self.id_cache.pop(key, None)
        for tid in record.transaction_ids:
            keys = self.written_by.get(tid)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.written_by[tid]

    def write_cache(
        self, transaction_id: str, writes: Sequence[CacheWrite], ttl_seconds: float
    ) -> None:
        expires = self.clock() + ttl_seconds
        for write in writes:
            key = (write.model, write.record_id)
            record = self.live_record(key)
            if record is None:
                self.records_written += 1
                record = _Record({}, False, False, [], expires, self.records_written)
                self.records[key] = record
                self.model_index.setdefault(write.model, {})[write.record_id] = None
            if write.kind is CacheKind.CREATE:
                self.unindex_fields(key, record.fields)
                record.fields = dict(write.fields)
                self.index_fields(key, record.fields)
                record.created, record.deleted = True, False
                self.id_cache[key] = (transaction_id, expires)
            elif write.kind is CacheKind.UPDATE:
                self.unindex_fields(
                    key, {k: record.fields[k] for k in write.fields if k in record.fields}
                )
                record.fields.update(write.fields)
                self.index_fields(key, write.fields)
            else:
                record.deleted = True
            if transaction_id not in record.transaction_ids:
                record.transaction_ids.append(transaction_id)
            record.expires_at = max(record.expires_at, expires)
            self.written_by.setdefault(transaction_id, set()).add(key)

    def index_fields(self, key: tuple[str, str], fields: Mapping[str, Any]) -> None:
        """Enter a record's ``fields`` in the field index (see ``CacheStore.find``)."""
        for name, value in fields.items():
            self.field_index.setdefault(field_value_key(key[0], name, value), {})[key[1]] = None

    def unindex_fields(self, key: tuple[str, str], fields: Mapping[str, Any]) -> None:
        """Take a record's ``fields`` out of the field index."""
        for name, value in fields.items():
            index_key = field_value_key(key[0], name, value)
            ids = self.field_index.get(index_key)
            if ids is not None:
                ids.pop(key[1], None)
                if not ids:
                    del self.field_index[index_key]

    def created_by(self, key: tuple[str, str]) -> str | None:
        entry = self.id_cache.get(key)
        if entry is None or self.live_record(key) is None:
            return None
        transaction_id, expires = entry
        return transaction_id if expires > self.clock() else None

    def extend(self, transaction_ids: Iterable[str], ttl_seconds: float) -> int:
        expires = self.clock() + ttl_seconds
        extended = 0
        for tid in transaction_ids:
            for key in list(self.written_by.get(tid, ())):
                record = self.live_record(key)
                if record is None:
                    continue
                record.expires_at = max(record.expires_at, expires)
                if key in self.id_cache and self.id_cache[key][0] == tid:
                    self.id_cache[key] = (tid, max(self.id_cache[key][1], expires))
                extended += 1
        return extended

    def release(self, transaction_ids: Iterable[str]) -> int:
        deleted = 0
        for tid in transaction_ids:
            for key in self.written_by.pop(tid, set()):
                record = self.records.get(key)
                if record is None:
                    continue
                if tid in record.transaction_ids:
                    record.transaction_ids.remove(tid)
                if self.id_cache.get(key, ("",))[0] == tid:
                    del self.id_cache[key]
                if not record.transaction_ids:
                    self._drop_record(key)
                    deleted += 1
        return deleted

    # -- lease --------------------------------------------------------------

    def live_lease(self) -> tuple[str, float] | None:
        if self.lease is not None and self.lease[1] <= self.clock():
            self.lease = None
        return self.lease
