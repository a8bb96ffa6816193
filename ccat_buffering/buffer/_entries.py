"""Claimed entries read back: a transaction, or refused with the reason and the id it names.

An entry is refused when it breaks a limit of
:mod:`ccat_buffering.write.payload_limits` (the check submit runs, run again at the
drain) or is not a readable transaction; the manager dead-letters those at
once so that they never block the queue.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ccat_buffering.buffer._entry_decoding import decode_entry, decode_shallow
from ccat_buffering.buffer.protocols import Backend, Claim
from ccat_buffering.errors import PayloadTooLargeError, TransactionValidationError
from ccat_buffering.write.models import Transaction, TransactionStatus
from ccat_buffering.write.payload_limits import MAX_INT_DIGITS, payload_problem

_LEADING_ID = re.compile(r'^\{"format_version":\d+,"transaction_id":"([^"]{1,100})"')


@dataclass(frozen=True)
class Refused:
    """A claimed entry that will not be applied: why, and the transaction id it starts with."""

    claim: Claim
    reason: str
    transaction_id: str | None


def _leading_id(payload: str) -> str | None:
    """The transaction id an entry starts with, without parsing all of it."""
    found = _LEADING_ID.match(payload[:200])
    return found.group(1) if found else None


def _over_limit(payload: str, limit: int | None) -> str | None:
    """Why an entry is refused at drain by the limits submit applies too, or ``None``."""
    problem = payload_problem(payload, limit)
    if problem is None:
        return None
    kind, what = problem
    if kind is PayloadTooLargeError:
        return (
            f"entry {what} (max_payload_bytes): it was not applied; raise the limit and "
            "replay it, or purge it"
        )
    return f"entry {what}; it was not applied: purge it and submit it again as the limit allows"


def read_claims(
    claims: Sequence[Claim], max_payload_bytes: int | None
) -> tuple[list[tuple[Claim, Transaction]], list[Refused]]:
    """Split claims into readable transactions and refused entries, each in buffer order."""
    parsed: list[tuple[Claim, Transaction]] = []
    refused: list[Refused] = []
    # A character is at most 4 bytes: an entry of up to this many is within the size limit.
    short = (
        MAX_INT_DIGITS if max_payload_bytes is None else min(MAX_INT_DIGITS, max_payload_bytes // 4)
    )
    for claim in claims:
        payload = claim.payload
        if len(payload) <= short:
            # Within every limit of payload_problem without counting its brackets:
            # too short for the size or a long number, and shallow by its shape.
            transaction = decode_shallow(payload)
            if transaction is not None:
                parsed.append((claim, transaction))
                continue
        too_large = _over_limit(payload, max_payload_bytes)
        if too_large is not None:
            refused.append(Refused(claim, too_large, _leading_id(payload)))
            continue
        try:
            parsed.append((claim, decode_entry(payload)))
        except TransactionValidationError as exc:
            refused.append(Refused(claim, f"unreadable entry: {exc}", None))
    return parsed, refused


Before = Callable[[], TransactionStatus]
"""The status a claim found before it wrote it ``processing``, read when called."""


@runtime_checkable
class ClaimsWithStatuses(Protocol):
    """A buffer store whose claim reads the claimed transactions' statuses in the same call.

    A capability: the drain writes every claimed transaction's status next,
    and reading them with the claim spares a round trip and a read per entry
    (issue #23). Stores without it are asked through the status store.
    """

    async def claim_with_statuses(
        self, count: int, lease_seconds: float, processing_at: dt.datetime | None = None
    ) -> list[tuple[Claim, str | None, TransactionStatus | None, Before | None]]:
        """:meth:`BufferStore.claim`, each claim with the status of the id its entry starts with.

        With ``processing_at``, the store may write some of those statuses
        ``processing`` in the claim, as :meth:`Transitions.claim` makes them
        at that time (state and ``updated_at`` changed, ``history`` given).

        Returns:
            Each claim, the transaction id its entry starts with (``None``
            where it was not read), that transaction's status, if any, and,
            where the claim wrote it ``processing``, the status before (read
            when called).
        """
        ...


async def claim_read(
    backend: Backend,
    count: int,
    lease_seconds: float,
    max_payload_bytes: int | None,
    processing_at: dt.datetime | None = None,
) -> tuple[
    list[tuple[Claim, Transaction, TransactionStatus | None, bool]],
    list[Refused],
    list[TransactionStatus],
]:
    """Claim, read the entries, and find the readable ones' statuses, in buffer order.

    A status that came with the claim is used only for the transaction the
    entry decodes to (same id); every other is read from the status store.
    Each readable entry says whether the claim wrote its status
    ``processing`` at ``processing_at`` (see :class:`ClaimsWithStatuses`):
    then the status given is that one. A status so written for an entry that
    is not read as that transaction (unreadable, or naming another id) comes
    back as it was before, in the third list: the caller writes it back.
    """
    store = backend.buffer
    known: dict[str, TransactionStatus | None] = {}
    moved: dict[str, tuple[str, Before]] = {}
    if isinstance(store, ClaimsWithStatuses):
        claimed = await store.claim_with_statuses(count, lease_seconds, processing_at)
        claims = [claim for claim, _, _, _ in claimed]
        known = {i: status for _, i, status, _ in claimed if i is not None}
        moved = {c.receipt: (i, b) for c, i, _, b in claimed if b is not None and i is not None}
    else:
        claims = await store.claim(count, lease_seconds)
    if not claims:
        return [], [], []
    parsed, unreadable = read_claims(claims, max_payload_bytes)
    missing = [tx.transaction_id for _, tx in parsed if tx.transaction_id not in known]
    if missing:
        known.update(zip(missing, await backend.status.get_many(missing), strict=True))
    if not moved:
        return (
            [(claim, tx, known[tx.transaction_id], False) for claim, tx in parsed],
            unreadable,
            [],
        )
    read = []
    delivered = set()
    for claim, tx in parsed:
        i = tx.transaction_id
        was_moved = claim.receipt in moved and moved[claim.receipt][0] == i
        if was_moved:
            delivered.add(claim.receipt)
        read.append((claim, tx, known[i], was_moved))
    strays: list[TransactionStatus] = []
    if len(delivered) < len(moved):
        refused = {r.claim.receipt: r.transaction_id for r in unreadable}
        strays = [
            before()
            for receipt, (i, before) in moved.items()
            if receipt not in delivered and refused.get(receipt) != i
        ]
    return read, unreadable, strays
