"""What ``ccat-buffering inspect`` finds of one transaction, gathered from the stores."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from ccat_buffering.cache_writes import cache_writes
from ccat_buffering.cli._operator import OperatorSite
from ccat_buffering.models import Transaction
from ccat_buffering.protocols import SupportsInspection

__all__ = ["inspect_transaction"]


def _utc(moment: dt.datetime) -> str:
    """ISO 8601 in UTC with ``Z``, as pydantic writes the statuses' times."""
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _iso(seconds: float) -> str:
    return _utc(dt.datetime.fromtimestamp(seconds, dt.UTC))


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
    losses = [loss.describe() for loss in await site.buffer_losses()]
    if status is None and payload is None and letter is None and not losses:
        return None
    history = []
    if status is not None:
        history.append(("buffered", status.created_at))
        if status.committed_at:
            history.append((f"committed at LSN {status.commit_lsn or '-'}", status.committed_at))
        if status.replicated_at:
            history.append(("replicated", status.replicated_at))
        history.append((f"now {status.state}", status.updated_at))
    return {
        "transaction_id": transaction_id,
        "status": None if status is None else status.model_dump(mode="json"),
        "history": [{"event": event, "at": _utc(at)} for event, at in history],
        "dead_letter": None
        if letter is None
        else {"reason": letter.reason, "dead_lettered_at": _iso(letter.dead_lettered_at)},
        "payload": None if payload is None else json.loads(payload),
        "keys": keys,
        # The buffer forgot what it held: an unknown or unfinished transaction may be among it.
        "buffer_losses": losses,
    }
