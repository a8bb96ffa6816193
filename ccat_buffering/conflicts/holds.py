"""What a site's unresolved conflicts hold: the rows they change and the keys they create.

A later transaction of the same site that changes one of those rows, or uses
one of those keys, depends on the conflicted one: applying it would build on a
write that did not happen. It waits with it (outcome ``waiting``) instead of
failing, and is released, in buffer order, when the first is resolved.

A key "used" is found by value: a created key that is a UUID, or text of 16
characters or more, appearing among a later write's values. Shorter keys
(integers, codes) are matched only as the row a step changes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from ccat_buffering.conflicts.log import unresolved_payloads
from ccat_buffering.drain.database import sqlstate_of
from ccat_buffering.write.models import Operation, Step, Transaction

__all__ = ["Holds"]

_CREATES = (Operation.CREATE, Operation.BULK_CREATE)


def _row(model: str, key: dict[str, Any]) -> tuple[str, str]:
    return model, json.dumps(sorted((k, str(v)) for k, v in key.items()))


def _records(step: Step) -> Iterator[dict[str, Any]]:
    if step.data is not None:
        yield step.data
    yield from step.records or ()


def _distinctive(value: Any) -> bool:
    return isinstance(value, uuid.UUID) or (isinstance(value, str) and len(value) >= 16)


class Holds:
    """The rows and keys of one site held by its unresolved conflicts."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], str] = {}
        self.keys: dict[str, str] = {}
        self.loaded = False

    @staticmethod
    def rows_of(tx: Transaction) -> list[tuple[str, str]]:
        """The rows ``tx`` writes (by model and key)."""
        found = []
        for step in tx.steps:
            if step.key is not None:
                found.append(_row(step.model, step.key))
            for record in _records(step):
                key = {f: record[f] for f in step.key_fields if f in record}
                if len(key) == len(step.key_fields):
                    found.append(_row(step.model, key))
        return found

    def hold(self, tx: Transaction) -> None:
        """Hold what ``tx`` writes and creates until it is resolved."""
        for row in self.rows_of(tx):
            self.rows.setdefault(row, tx.transaction_id)
        for step in tx.steps:
            if step.operation in _CREATES:
                for record in _records(step):
                    for name in step.key_fields:
                        value = record.get(name)
                        if _distinctive(value):
                            self.keys.setdefault(str(value), tx.transaction_id)

    def release(self, transaction_id: str) -> None:
        """Forget what ``transaction_id`` held (it was resolved)."""
        self.rows = {k: v for k, v in self.rows.items() if v != transaction_id}
        self.keys = {k: v for k, v in self.keys.items() if v != transaction_id}

    def blocker(self, tx: Transaction) -> str | None:
        """The conflicted transaction ``tx`` depends on, if any."""
        if not self.rows and not self.keys:
            return None
        for row in self.rows_of(tx):
            holder = self.rows.get(row)
            if holder is not None and holder != tx.transaction_id:
                return holder
        for step in tx.steps:
            for record in [*_records(step), step.key or {}]:
                for value in record.values():
                    if _distinctive(value):
                        holder = self.keys.get(str(value))
                        if holder is not None and holder != tx.transaction_id:
                            return holder
        return None

    async def load(self, conn: AsyncConnection, site: str) -> None:
        """Hold what the site's unresolved conflicts in the log hold (once per process)."""
        self.rows, self.keys = {}, {}
        try:
            records = await unresolved_payloads(conn, site)
        except Exception as exc:
            if "no such table" not in str(exc) and sqlstate_of(exc) != "42P01":
                raise
            # A database not yet given the log (`db init` before this release)
            # holds no conflict; the first conflict to write pauses the queue.
            await conn.rollback()
            records = []
        for record in records:
            if record.payload:
                self.hold(Transaction.from_json(record.payload))
        self.loaded = True
