"""What a submit does: the idempotency key, the bases, and the site type's write.

A ``secondary`` site buffers the transaction; a ``main`` site applies it at
once and answers ``committed``. Either way the transaction is first converted,
stamped with its write time and based on what the site sees now, and the
process counts the submit or the refusal (:mod:`ccat_buffering.observe.activity`).
:class:`Submitting` is that part of
:class:`~ccat_buffering.site.coordinator.BufferingCoordinator`.
"""

from __future__ import annotations

from typing import Any

from ccat_buffering.buffer.cache_writes import generated_writes
from ccat_buffering.buffer.idempotency import Outcome, submit_once
from ccat_buffering.buffer.manager import TransactionManager, as_json
from ccat_buffering.buffer.protocols import Backend
from ccat_buffering.config.settings import BufferingSettings
from ccat_buffering.conflicts.bases import stamp_write_time, with_bases
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.drain.tracing import Tracing
from ccat_buffering.errors import ConflictError
from ccat_buffering.logs import SiteLogger
from ccat_buffering.observe.activity import Activity, refusal_reason
from ccat_buffering.read.reads import Reads
from ccat_buffering.write.models import Transaction, TransactionState, TransactionStatus, utc_now
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["Submitting"]


class Submitting:
    """Submit transactions the way the site's type requires (a base of the coordinator)."""

    settings: BufferingSettings
    backend: Backend
    registry: ModelRegistry
    manager: TransactionManager
    executor: TransactionExecutor
    reads: Reads
    activity: Activity
    tracing: Tracing
    log: SiteLogger

    async def status(self, transaction_id: str) -> TransactionStatus | None:
        """The status of a transaction, or ``None`` if unknown or expired."""
        return await self.manager.status(transaction_id)

    async def submit(
        self, transaction: Transaction, *, idempotency_key: str | None = None
    ) -> TransactionStatus:
        """Write a transaction the way the site's type requires.

        A ``secondary`` site buffers it (returns at once, ``buffered``); a
        ``main`` site applies it now and returns ``committed`` (or raises),
        with what the database computed for its creates in ``generated``.

        Args:
            transaction: From :meth:`TransactionBuilder.build`.
            idempotency_key: The client's key for this request: a second
                submit with the same key (and the same steps, ids included:
                submit the same transaction again) returns the first one's
                status and buffers nothing (see :mod:`ccat_buffering.buffer.idempotency`).

        Returns:
            Its status (the first transaction's, for a known key).

        Raises:
            TransactionValidationError: Bad input; nothing was written.
            IdempotencyKeyReusedError: The key was used for other steps.
            ExecutionError: At a main site, the database refused it.
        """
        if idempotency_key is not None:
            return (await self.submit_once(transaction, idempotency_key)).status
        return await self._counted(transaction)

    async def submit_once(
        self,
        transaction: Transaction,
        key: str,
        *,
        request: str | None = None,
        response: Any = None,
        status_code: int | None = None,
    ) -> Outcome:
        """Submit under an idempotency key (:func:`~ccat_buffering.buffer.idempotency.submit_once`).

        Args:
            transaction: What this request built.
            key: The client's idempotency key.
            request: The request's fingerprint (the transaction's steps by default).
            response: The answer to record for retries.
            status_code: The HTTP status to record for retries.

        Returns:
            The status, whether it was a retry, and the key's record.
        """
        outcome = await submit_once(
            self.backend.status,
            transaction,
            key,
            submit=self._counted,
            status_of=self.status,
            ttl=self.settings.idempotency_ttl,
            request=request,
            response=response,
            status_code=status_code,
        )
        if outcome.replayed:
            self.activity.replays += 1
            self.log.info(
                "idempotency key known: answered with %s (%s)",
                outcome.status.transaction_id,
                outcome.status.state,
                transaction_id=transaction.transaction_id,
            )
        return outcome

    async def _counted(self, transaction: Transaction) -> TransactionStatus:
        tx_id = transaction.transaction_id
        try:
            with self.tracing.sending(transaction) as traced:
                status = await self._submit(traced)
        except Exception as exc:
            reason = refusal_reason(exc)
            self.activity.refusals[reason] += 1
            self.log.info("submit refused (%s): %s", reason, exc, transaction_id=tx_id)
            raise
        self.activity.submits[str(status.state)] += 1
        self.log.info("submitted: %s", status.state, transaction_id=tx_id)
        return status

    async def _submit(self, transaction: Transaction) -> TransactionStatus:
        transaction = await self._with_bases(transaction)
        if self.settings.site_type == "secondary":
            return await self.manager.buffer(transaction)
        transaction.to_json(self.settings.max_payload_bytes)
        result = await self.executor.execute_batch([transaction])
        outcome = result.outcomes[0]
        self.manager.found_conflicts(outcome.conflicts)
        if outcome.conflicted:
            raise ConflictError(
                "; ".join(c.describe() for c in outcome.conflicts)
                + " (see `ccat-buffering conflicts list`)",
                outcome.conflicts,
            )
        if outcome.error is not None:
            raise outcome.error
        self.tracing.committed([transaction], result.commit_lsn)
        now = utc_now()
        status = TransactionStatus(
            transaction_id=transaction.transaction_id,
            endpoint=transaction.endpoint,
            state=TransactionState.COMMITTED,
            created_at=transaction.created_at,
            committed_at=now,
            commit_lsn=result.commit_lsn,
            generated=as_json(outcome.generated),
        )
        # A row keyed by the database is cached under that key until the replica
        # has it (released with the transaction), so the site's reads find it now.
        writes = generated_writes(transaction, outcome.generated)
        async with self.backend.atomic() as batch:
            batch.put_status(status, self.settings.status_ttl)
            if writes:
                batch.write_cache(transaction.transaction_id, writes, self.manager.cache_ttl)
        return status

    async def _with_bases(self, transaction: Transaction) -> Transaction:
        """Converted, stamped with its write time, and based on what the site sees now."""
        if not isinstance(transaction, Transaction):
            return transaction  # the manager refuses it with the usual message
        transaction = self.registry.convert(transaction)
        transaction = stamp_write_time(transaction, self.registry, utc_now())
        return await with_bases(
            transaction,
            lambda model, key: self.reads.get(model, key),
            self.registry,
            lambda model, keys: self.reads.get_many(model, keys),
        )
