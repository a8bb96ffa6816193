"""What ``ccat-buffering inspect`` finds of one transaction, gathered from the stores."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from ccat_buffering.buffer.cache_writes import cache_writes
from ccat_buffering.buffer.protocols import SupportsInspection
from ccat_buffering.buffer.retry import describe_error
from ccat_buffering.cli._operator import OperatorSite
from ccat_buffering.masking import mask_text
from ccat_buffering.observe._health_reads import bounded
from ccat_buffering.write.models import Transaction, TransactionStatus

__all__ = ["inspect_transaction"]


def _utc(moment: dt.datetime) -> str:
    """ISO 8601 in UTC with ``Z``, as pydantic writes the statuses' times."""
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _iso(seconds: float) -> str:
    return _utc(dt.datetime.fromtimestamp(seconds, dt.UTC))


LOSS_CHECK_TIMEOUT = 5.0
"""Seconds ``inspect`` gives the main database for the buffer-loss check."""


def _history(status: TransactionStatus | None) -> list[dict[str, Any]]:
    """The recorded events, oldest first (derived from the times for an older status)."""
    if status is None:
        return []
    if status.history:
        return [{"event": e.event, "at": _utc(e.at), "note": e.note} for e in status.history]
    derived: list[tuple[str, dt.datetime]] = [("buffered", status.created_at)]
    if status.committed_at:
        derived.append((f"committed at LSN {status.commit_lsn or '-'}", status.committed_at))
    if status.replicated_at:
        derived.append(("replicated", status.replicated_at))
    derived.append((f"now {status.state}", status.updated_at))
    return [{"event": event, "at": _utc(at), "note": None} for event, at in derived]


async def inspect_transaction(site: OperatorSite, transaction_id: str) -> dict[str, Any] | None:
    """What the site knows of one transaction, as ``inspect --json`` prints it.

    Its status and history, its dead letter, its payload and keys (where the
    backend can inspect), and the recorded losses of buffered state, which
    may have taken an unknown or unfinished transaction with them.

    Args:
        site: The operator's site, open.
        transaction_id: The transaction's id.

    Returns:
        The findings, or ``None`` when the site knows nothing of it.
    """
    status = await site.status(transaction_id)
    backend = site.backend
    payload = None
    keys: list[dict[str, Any]] = []
    if isinstance(backend, SupportsInspection):
        payload = await backend.find_payload(transaction_id)
        records: list[tuple[str, str]] = []
        if payload is not None:
            try:
                records = [
                    (w.model, w.record_id) for w in cache_writes(Transaction.from_json(payload))
                ]
            except ValueError:
                records = []
        for info in await backend.transaction_keys(transaction_id, records):
            keys.append({"key": info.key, "kind": info.kind, "ttl_seconds": info.ttl_seconds})
    letter = await backend.dead_letters.get(transaction_id)
    unchecked: list[str] = []
    try:
        # The buffer alone answers the rest; the main database only adds this check,
        # and it is the part that is down or hung when operators come here.
        # Timed by the clock: a cancelled statement's own error is no answer either.
        found = await bounded(site.buffer_losses(), LOSS_CHECK_TIMEOUT)
        losses = [loss.describe() for loss in found]
    except Exception as exc:  # any failure of the database: say so, go on
        losses = []
        why = "not answering" if isinstance(exc, TimeoutError) else describe_error(exc)
        unchecked.append(
            f"buffer-loss check skipped: the main database could not be asked ({mask_text(why)})"
        )
    if status is None and payload is None and letter is None and not losses:
        return None
    return {
        "transaction_id": transaction_id,
        "status": None if status is None else status.model_dump(mode="json"),
        "history": _history(status),
        "unchecked": unchecked,
        "dead_letter": None
        if letter is None
        else {"reason": letter.reason, "dead_lettered_at": _iso(letter.dead_lettered_at)},
        "payload": None if payload is None else json.loads(payload),
        "keys": keys,
        # The buffer forgot what it held: an unknown or unfinished transaction may be among it.
        "buffer_losses": losses,
    }
