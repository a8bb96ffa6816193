"""Idempotency keys: a client's retries of one request become one transaction.

A client that timed out does not know whether its write was buffered. It
sends the request again with the same key (the ``Idempotency-Key`` header, or
``submit(..., idempotency_key=...)``) and gets the first transaction's status
(and, over HTTP, the first response) instead of a second transaction.

The key's record is taken before anything is buffered, with one atomic
claim (``SET ... NX GET`` on Redis; one critical section in memory): of
concurrent requests with one key exactly one buffers. The record holds the
request's fingerprint (another request under the same key is refused with
:class:`~ccat_buffering.IdempotencyKeyReusedError`, nothing written), the
transaction itself and, once submitted, its first status and answer. Should
the first request die between its claim and its buffering, the next retry
submits the recorded transaction, under the same id, so the ledger applies
it once even if the first did buffer it after all. A record lives
``idempotency_ttl`` seconds (7 days by default, never less than
``status_ttl``); a retry after that is a new request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from ccat_buffering.buffer.protocols import StatusStore, SupportsIdempotencyKeys
from ccat_buffering.errors import ConfigurationError, IdempotencyKeyReusedError
from ccat_buffering.write.models import Transaction
from ccat_buffering.write.status import TransactionStatus

__all__ = [
    "IDEMPOTENCY_HEADER",
    "KeyRecord",
    "Outcome",
    "digest",
    "fingerprint",
    "keys_of",
    "submit_once",
]

IDEMPOTENCY_HEADER = "Idempotency-Key"
"""The request header that carries a key."""

MAX_KEY_LENGTH = 255
"""The longest key accepted (characters)."""

SETTLE_SECONDS = 5.0
"""How long a retry waits for a concurrent first request to finish submitting
before it submits the recorded transaction itself."""


class KeyRecord(BaseModel):
    """What one idempotency key stands for.

    Attributes:
        fingerprint: Of the first request (its body and target).
        transaction_id: The transaction it became.
        transaction: The transaction, as JSON (submitted again by a retry if
            the first request died before submitting it).
        status: The status the first submit returned, once it returned.
        response: The first answer's JSON body (HTTP), if any.
        status_code: The first answer's HTTP status, if any.
    """

    fingerprint: str
    transaction_id: str
    transaction: str
    status: TransactionStatus | None = None
    response: Any = None
    status_code: int | None = None


class Outcome(BaseModel):
    """What :func:`submit_once` did.

    Attributes:
        status: The transaction's status now (the first's, for a retry).
        replayed: Whether the key was known: nothing new was buffered.
        record: The key's record (the first answer is there).
    """

    status: TransactionStatus
    replayed: bool
    record: KeyRecord


def digest(key: str) -> str:
    """The store's name of a key: its SHA-256 in hex.

    Raises:
        IdempotencyKeyReusedError: Not a key: empty, or longer than
            :data:`MAX_KEY_LENGTH` characters.
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise IdempotencyKeyReusedError(
            f"idempotency key must be 1 to {MAX_KEY_LENGTH} characters, got {len(key)}"
        )
    return hashlib.sha256(key.encode()).hexdigest()


def fingerprint(*parts: str | bytes) -> str:
    """A fingerprint of a request from its parts (method, target, body, ...)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def _transaction_fingerprint(transaction: Transaction) -> str:
    steps = [step.model_dump(mode="json") for step in transaction.steps]
    return fingerprint(transaction.endpoint, json.dumps(steps, sort_keys=True, default=str))


def keys_of(store: StatusStore) -> SupportsIdempotencyKeys:
    """The status store's idempotency keys.

    Raises:
        ConfigurationError: The backend keeps none.
    """
    if not isinstance(store, SupportsIdempotencyKeys):
        raise ConfigurationError(
            f"{type(store).__name__} keeps no idempotency keys: use a backend that does "
            "(memory://, redis://), or send no Idempotency-Key"
        )
    return store


async def submit_once(
    store: StatusStore,
    transaction: Transaction,
    key: str,
    *,
    submit: Callable[[Transaction], Awaitable[TransactionStatus]],
    status_of: Callable[[str], Awaitable[TransactionStatus | None]],
    ttl: float,
    request: str | None = None,
    response: Any = None,
    status_code: int | None = None,
) -> Outcome:
    """Submit ``transaction`` unless ``key`` was used before; then answer as the first time.

    Args:
        store: The site's status store (it keeps the keys).
        transaction: What this request built.
        key: The client's idempotency key.
        submit: The site's submit, for a new key.
        status_of: The site's status lookup.
        ttl: Seconds the key's record lives.
        request: The request's fingerprint; the transaction's endpoint and
            steps by default (so a retry must send the same steps, ids
            included: resubmit the same :class:`~ccat_buffering.Transaction`).
        response: The answer to record for retries (HTTP: the JSON body).
        status_code: The HTTP status to record for retries.

    Returns:
        What happened.

    Raises:
        IdempotencyKeyReusedError: The key was used with another request.
    """
    keys = keys_of(store)
    name = digest(key)
    record = KeyRecord(
        fingerprint=request or _transaction_fingerprint(transaction),
        transaction_id=transaction.transaction_id,
        transaction=transaction.to_json(),
        response=response,
        status_code=status_code,
    )
    existing = await keys.claim_key(name, record.model_dump_json(), ttl)
    if existing is None:
        try:
            status = await submit(transaction)
        except BaseException:
            # Nothing was written for this key: a retry may try again.
            await keys.drop_key(name)
            raise
        record.status = status
        await keys.put_key(name, record.model_dump_json(), ttl)
        return Outcome(status=status, replayed=False, record=record)
    first = KeyRecord.model_validate_json(existing)
    if first.fingerprint != record.fingerprint:
        raise IdempotencyKeyReusedError(
            f"idempotency key {key!r} was used for another request (transaction "
            f"{first.transaction_id}); send a new key for a new request"
        )
    return Outcome(
        status=await _settled(keys, name, first, submit, status_of, ttl),
        replayed=True,
        record=first,
    )


async def lookup(store: StatusStore, key: str, request: str) -> KeyRecord | None:
    """The record of a key already used for this request, or ``None`` for a new key.

    Raises:
        IdempotencyKeyReusedError: The key was used with another request.
    """
    found = await keys_of(store).get_key(digest(key))
    if found is None:
        return None
    first = KeyRecord.model_validate_json(found)
    if first.fingerprint != request:
        raise IdempotencyKeyReusedError(
            f"idempotency key {key!r} was used for another request (transaction "
            f"{first.transaction_id}); send a new key for a new request"
        )
    return first


async def _settled(
    keys: SupportsIdempotencyKeys,
    name: str,
    first: KeyRecord,
    submit: Callable[[Transaction], Awaitable[TransactionStatus]],
    status_of: Callable[[str], Awaitable[TransactionStatus | None]],
    ttl: float,
) -> TransactionStatus:
    """The first transaction's status, once its request has submitted it."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        now = await status_of(first.transaction_id)
        if now is not None:
            return now
        if first.status is not None:
            return first.status  # submitted, and its status has expired since
        if time.monotonic() >= deadline:
            # The first request claimed the key and never submitted (it died):
            # submit what it recorded, under the same id (the ledger applies
            # it once should the first have buffered it after all).
            status = await submit(Transaction.from_json(first.transaction))
            first.status = status
            await keys.put_key(name, first.model_dump_json(), ttl)
            return status
        # A concurrent first request is between its claim and its submit.
        await asyncio.sleep(0.02)
        found = await keys.get_key(name)
        if found is not None:
            first = KeyRecord.model_validate_json(found)
