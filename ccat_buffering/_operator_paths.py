"""Applying transactions one at a time outside the drain, for operators' tools.

A dry-run replay rehearses dead letters in a transaction that is rolled back;
a transaction that waited behind a resolved conflict is applied with its wait
released; an operator's ``--keep mine`` applies one without its base checks.
All take the session path (a round trip per statement): they are rare, and
each must tell exactly what happened to its one transaction. Part of
:class:`~ccat_buffering.executor.TransactionExecutor`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from ccat_buffering._batch_preparing import BatchPreparer
from ccat_buffering._link import LinkTimeouts, watched
from ccat_buffering._session_path import SessionPath
from ccat_buffering.database import not_the_transactions_fault
from ccat_buffering.errors import ConfigurationError, DatabaseUnavailableError
from ccat_buffering.models import Transaction
from ccat_buffering.outcome import BatchResult, Outcome
from ccat_buffering.registry import ModelRegistry
from ccat_buffering.retry import classify_failure

__all__ = ["OperatorPaths"]


class OperatorPaths:
    """The executor's one-transaction paths; its state lives on the executor."""

    engine: AsyncEngine
    registry: ModelRegistry
    timeouts: LinkTimeouts
    preparer: BatchPreparer
    _session: SessionPath

    async def rehearse(self, transactions: Sequence[Transaction]) -> list[Outcome]:
        """Apply ``transactions`` in order inside one database transaction, then roll it back.

        Each runs in its own savepoint after the ones before it, as a batch
        would; nothing is committed, so the main database is left as it was.

        Args:
            transactions: In the order they would be applied.

        Returns:
            What each would do: applied, already applied, or its error.

        Raises:
            DatabaseUnavailableError: The database could not be reached.
        """
        outcomes: list[Outcome] = []
        try:
            async with self.engine.connect() as conn, watched(conn, self.timeouts.statement):
                await conn.begin()
                try:
                    ids = [tx.transaction_id for tx in transactions]
                    done = await self._session.applied_ids(conn, ids)
                    session = AsyncSession(bind=conn, autoflush=False)
                    for tx in transactions:
                        if tx.transaction_id in done:
                            outcomes.append(Outcome(tx.transaction_id, already_applied=True))
                            continue
                        try:
                            self.preparer.check(tx)
                        except Exception as exc:
                            kind = classify_failure(exc)
                            outcomes.append(Outcome(tx.transaction_id, error=exc, kind=kind))
                            continue
                        outcomes.append(await self._session.apply_one(session, tx))
                finally:
                    await conn.rollback()
        except (DatabaseUnavailableError, ConfigurationError):
            raise
        except Exception as exc:
            raise not_the_transactions_fault(exc, "while rehearsing a replay") from exc
        return outcomes

    async def execute_released(self, transaction: Transaction) -> BatchResult:
        """Apply a transaction that waited behind a resolved conflict, checked as a drain does.

        Its ``waiting`` log row is marked released in the same database transaction.

        Raises:
            DatabaseUnavailableError: The database could not be reached.
        """
        self.registry.check(transaction)
        outcomes = [Outcome(transaction.transaction_id)]
        async with self.engine.connect() as conn, watched(conn, self.timeouts.statement):
            lsn = await self._session.run(conn, [(0, transaction)], outcomes, release=True)
        return BatchResult(outcomes, lsn)

    async def execute_unchecked(self, transaction: Transaction) -> BatchResult:
        """Apply one transaction without its base checks (an operator's ``--keep mine``).

        A ``version_id_col`` is still bumped from the row's current version.

        Raises:
            DatabaseUnavailableError: The database could not be reached.
        """
        self.registry.check(transaction)
        outcomes = [Outcome(transaction.transaction_id)]
        async with self.engine.connect() as conn, watched(conn, self.timeouts.statement):
            lsn = await self._session.run(conn, [(0, transaction)], outcomes, force=True)
        return BatchResult(outcomes, lsn)
