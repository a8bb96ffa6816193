"""Apply buffered transactions to the main database, exactly once.

A batch of transactions runs in one database transaction with a SAVEPOINT per
buffered transaction, so that one bad transaction rolls back alone; the batch
commits only what precedes its first such failure (order holds through
failures). Each
applied transaction's id goes into the applied-transactions ledger
(:mod:`ccat_buffering.drain.database`) inside its savepoint: a transaction whose
commit succeeded but whose acknowledgement was lost is found there on
redelivery and skipped. After COMMIT (never inside the transaction) the
commit's LSN is read on the same connection.

The executor checks and prepares a batch, then sends it down one of two
paths: :mod:`ccat_buffering.drain._pipelined` (psycopg's pipeline mode, one round
trip) or :mod:`ccat_buffering.drain._session_path` (an ORM session, a round trip
per statement).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from ccat_buffering.buffer.retry import FailureKind, classify_failure, is_schema_lag
from ccat_buffering.conflicts.checked import ConflictSuspected
from ccat_buffering.conflicts.log import create_conflict_log
from ccat_buffering.drain._batch_preparing import BatchPreparer
from ccat_buffering.drain._link import LinkTimeouts, watch_engine, watched
from ccat_buffering.drain._operator_paths import OperatorPaths
from ccat_buffering.drain._pipelined import PipelinedPath, PreparedBatch
from ccat_buffering.drain._session_path import CommitRefusedError, SessionPath, failure_outcome
from ccat_buffering.drain.database import create_ledger, not_the_transactions_fault, sqlstate_of
from ccat_buffering.drain.ledger_pruning import recorded_horizon
from ccat_buffering.drain.outcome import BatchResult, Outcome
from ccat_buffering.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    LedgerHorizonError,
)
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import Transaction, utc_now
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["BatchResult", "Outcome", "TransactionExecutor"]


def _suspected(outcome: Outcome) -> bool:
    """Whether the pipeline stopped a transaction at a base check or an existing row."""
    error = outcome.error
    return isinstance(error, ConflictSuspected) or (
        error is not None and sqlstate_of(error) == "23505"
    )


class TransactionExecutor(OperatorPaths):
    """Applies transactions to the main database through registered mapped classes.

    Args:
        engine: The main database.
        registry: The mapped classes steps may name.
        ledger: Record and check applied transaction ids (exactly-once
            effect); switch off only to measure what it costs.
        timeouts: The link's limits; a call unanswered for
            ``timeouts.statement`` seconds discards its connection and fails
            as an outage.
        site: The site whose transactions it applies, recorded in the
            ledger (pruning goes by it) and the conflict log.
        hold: Hold later transactions behind a rejected one (a ``secondary``
            site); a ``main`` site's services get the conflict at once instead.
        ledger_retention: The site's ``ledger_retention``: a transaction
            older than half of it is checked against the site's pruned
            horizon before it is applied (see
            :mod:`ccat_buffering.drain.ledger_pruning`).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        registry: ModelRegistry,
        *,
        ledger: bool = True,
        timeouts: LinkTimeouts | None = None,
        site: str = "",
        hold: bool = True,
        ledger_retention: float | None = None,
    ) -> None:
        self.engine = engine
        self.site = site
        self.registry = registry
        self.ledger = ledger
        self.timeouts = timeouts or LinkTimeouts()
        self.ledger_retention = ledger_retention
        self._session = SessionPath(registry, ledger, site, hold)
        self._pipelined = PipelinedPath(registry, ledger, engine.dialect, site)
        self.preparer = BatchPreparer(registry, self._pipelined, engine.dialect)
        watch_engine(engine)

    async def ping(self) -> bool:
        """Whether the database answers a trivial query within the statement timeout."""
        try:
            async with self.engine.connect() as conn, watched(conn, self.timeouts.statement):
                await conn.exec_driver_sql("SELECT 1")
        except Exception:
            return False
        return True

    async def create_ledger(self) -> None:
        """Create the ledger table and the conflict log if they do not exist."""
        await create_ledger(self.engine)
        await create_conflict_log(self.engine)

    async def is_applied(self, transaction_id: str) -> bool:
        """Whether the ledger holds ``transaction_id``."""
        async with self.engine.connect() as conn:
            return bool(await self._session.applied_ids(conn, [transaction_id]))

    async def execute(self, transaction: Transaction) -> Outcome:
        """Apply one transaction in its own database transaction.

        Returns:
            Its outcome (errors are returned, not raised, except outages).

        Raises:
            DatabaseUnavailableError: The database could not be reached.
        """
        return (await self.execute_batch([transaction])).outcomes[0]

    async def execute_batch(self, transactions: Sequence[Transaction]) -> BatchResult:
        """Apply transactions in order, in one database transaction, a savepoint each.

        A transaction that fails rolls back to its savepoint, and the batch
        stops there when the failure holds the queue (it will be tried again,
        see :attr:`~ccat_buffering.buffer.retry.FailureKind.holds_the_queue`): one
        commit covers the transactions before it, and those after it are
        returned :attr:`~ccat_buffering.drain.outcome.Outcome.waiting`, unapplied,
        so that the failed one can be retried before any of them. A
        transaction refused at once (invalid, unknown model) holds nothing.

        Args:
            transactions: In buffer order.

        Returns:
            Outcomes in the same order, and the commit's LSN.

        Raises:
            DatabaseUnavailableError: The database could not be reached or the
                batch as a whole failed; nothing of the batch may be assumed
                applied (the ledger settles it on redelivery).
        """
        past = await self._past_horizon(transactions)
        if past:
            return await self._without(transactions, past)
        return await self._after_stops(transactions, await self._execute_once(transactions))

    async def _execute_once(self, transactions: Sequence[Transaction]) -> BatchResult:
        """One database transaction: the batch up to its first stop (see :meth:`execute_batch`)."""
        batch = self.preparer.take(transactions)
        runnable = batch.runnable
        if not runnable:
            return BatchResult(batch.outcomes, None)
        try:
            await self._check_holds(batch)
            lsn = await self._run(batch)
        except CommitRefusedError as refused:
            outcomes = batch.outcomes
            if len(runnable) == 1:
                index, tx = runnable[0]
                outcomes[index] = failure_outcome(tx, refused.error, self.registry)
                return BatchResult(outcomes, None)
            # A deferred constraint refused the whole commit: halves, in order, until
            # the error lands on the transaction that caused it (about 2 log2(n)
            # more batches for one such transaction, not n). The second half is not
            # tried when the first stopped at a failure: it waits behind it.
            lsn = None
            for index, tx in runnable:
                outcomes[index] = Outcome(tx.transaction_id)  # nothing of it was committed
            half = len(runnable) // 2
            for part in (runnable[:half], runnable[half:]):
                if any(outcomes[index].holds for index, _ in runnable[:half]):
                    break
                result = await self.execute_batch([tx for _, tx in part])
                for (index, _), outcome in zip(part, result.outcomes, strict=True):
                    outcomes[index] = outcome
                lsn = result.commit_lsn or lsn
        except (DatabaseUnavailableError, ConfigurationError):
            raise
        except Exception as exc:
            if is_schema_lag(exc):
                raise not_the_transactions_fault(exc, "while applying a batch") from exc
            raise DatabaseUnavailableError(
                f"the batch could not be applied ({classify_failure(exc)}): {exc}"
            ) from exc
        outcomes = batch.outcomes
        if batch.applied:
            # The first message applied every runnable one: nothing stopped.
            return BatchResult(outcomes, lsn, all_done=len(runnable) == len(outcomes))
        if batch.pipelined:
            # (Its ledger row goes first in each transaction: already settled.)
            # The pipeline stopped at a write that met another party's row (a
            # base that moved, a key that exists): the session path tells the
            # conflict and lets the policy decide it, before anything behind it.
            stop = next(((i, tx) for i, tx in batch.todo if _suspected(outcomes[i])), None)
            if stop is not None:
                lsn = await self._decide_conflicts([stop], outcomes) or lsn
        else:
            outcomes = await self._settle_failures(outcomes)
        return BatchResult(outcomes, lsn)

    async def _after_stops(
        self, transactions: Sequence[Transaction], result: BatchResult
    ) -> BatchResult:
        """Apply what waits behind a stop that turned out to hold nothing, in order.

        A batch stops at its first failure. When that failure was the ledger
        showing the transaction applied already (another holder's commit), or
        a conflict its policy decided (applied, or ``conflicted``: out of the
        queue, a retried failure no more), nothing needs to wait for it: the
        rest is applied now, in order, as often as that happens in the batch.
        """
        if result.all_done:
            return result  # nothing holds, nothing waits
        outcomes, lsn = list(result.outcomes), result.commit_lsn
        while True:
            first = next((i for i, o in enumerate(outcomes) if o.holds or o.waiting), None)
            if first is None or outcomes[first].holds:
                return BatchResult(outcomes, lsn)
            rest = [i for i in range(first, len(outcomes)) if outcomes[i].waiting]
            again = await self._execute_once([transactions[i] for i in rest])
            for i, outcome in zip(rest, again.outcomes, strict=True):
                outcomes[i] = outcome
            lsn = again.commit_lsn or lsn
            if outcomes[first].waiting:
                return BatchResult(outcomes, lsn)  # no progress: it goes back to the head

    async def load_conflicts(self) -> None:
        """Learn what the site's unresolved conflicts hold (the first batch does it if not done).

        Once per process: later conflicts are learnt as they are found, and a
        conflict resolved elsewhere is noticed when a transaction would wait on it.
        """
        async with self.engine.connect() as conn, watched(conn, self.timeouts.statement):
            await self._session.holds.load(conn, self.site)

    async def _check_holds(self, batch: PreparedBatch) -> None:
        """Know the site's unresolved conflicts (once); a dependent takes the session path."""
        holds = self._session.holds
        if not holds.loaded:
            await self.load_conflicts()
        if batch.pipelined and any(holds.blocker(tx) for _, tx in batch.runnable):
            batch.pipelined = False

    async def _decide_conflicts(
        self, suspects: list[tuple[int, Transaction]], outcomes: list[Outcome]
    ) -> LSN | None:
        """Apply again, through the session path, what the pipeline's base check stopped.

        Only the transaction the pipeline stopped at, whose write met a moved,
        missing or existing row, comes here (a round trip per statement, on
        the rare path); the session path tells the conflict's kind, reads the
        other party's values and lets the policy decide. What followed it in
        the batch was not applied and goes next (:meth:`_after_stops`), so
        buffer order holds.
        """
        async with self.engine.connect() as conn, watched(conn, self.timeouts.statement):
            return await self._session.run(conn, suspects, outcomes)

    async def _past_horizon(self, transactions: Sequence[Transaction]) -> dict[str, Outcome]:
        """Outcomes refusing the transactions created before the site's pruned ledger horizon.

        The horizon is never later than ``now - ledger_retention``, so only a
        batch holding a transaction older than half the retention (a restored
        backup, an entry held through a long outage) pays the extra query.
        """
        if not (self.ledger and self.site and self.ledger_retention):
            return {}
        recent = utc_now() - dt.timedelta(seconds=self.ledger_retention / 2)
        if all(tx.created_at >= recent for tx in transactions):
            return {}
        try:
            async with self.engine.connect() as conn, watched(conn, self.timeouts.statement):
                horizon = await recorded_horizon(conn, self.site)
        except Exception as exc:
            if classify_failure(exc) is FailureKind.OUTAGE:
                raise not_the_transactions_fault(exc, "reading the ledger's horizon") from exc
            raise
        if horizon is None:
            return {}
        refused: dict[str, Outcome] = {}
        for tx in transactions:
            if tx.created_at < horizon:
                error = LedgerHorizonError(
                    f"transaction {tx.transaction_id} was created at {tx.created_at.isoformat()}, "
                    f"before the ledger of site {self.site!r} was pruned "
                    f"({horizon.isoformat()}): the ledger cannot tell whether it was applied "
                    "before, so it was not applied; check the main database for its rows, "
                    "then purge it or submit it again as a new transaction"
                )
                refused[tx.transaction_id] = Outcome(
                    tx.transaction_id, error=error, kind=FailureKind.PERMANENT
                )
        return refused

    async def _without(
        self, transactions: Sequence[Transaction], refused: dict[str, Outcome]
    ) -> BatchResult:
        """Apply all but ``refused``; their outcomes take their places in order."""
        rest = [tx for tx in transactions if tx.transaction_id not in refused]
        result = await self.execute_batch(rest) if rest else BatchResult([], None)
        applied = iter(result.outcomes)
        outcomes = [refused.get(tx.transaction_id) or next(applied) for tx in transactions]
        return BatchResult(outcomes, result.commit_lsn)

    def prepare(self, transactions: Sequence[Transaction]) -> None:
        """Do the work of :meth:`execute_batch` that needs no database, ahead of it.

        The checks, the plan and the first message of a batch cost client
        CPU in proportion to its size; the processor prepares the next batch
        while the current one waits on the link, so that its own call only
        sends. One batch is held; :meth:`execute_batch` of the very same
        transaction objects, in the same order, uses it, and any other batch
        is prepared anew.

        Args:
            transactions: In buffer order.
        """
        self.preparer.hold(transactions)

    async def _settle_failures(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Report a failure as applied when the ledger holds it (applied by another holder).

        A processor whose lease lapsed mid-batch may commit the same
        transaction concurrently; its twin here then fails on the ledger's key.
        That transaction is applied, and must never be dead-lettered.
        """
        failed = [o.transaction_id for o in outcomes if o.error is not None]
        if not failed or not self.ledger:
            return outcomes
        try:
            async with self.engine.connect() as conn:
                done = await self._session.applied_ids(conn, failed)
        except Exception:
            return outcomes  # the failures stand; a redelivery settles them
        return [
            Outcome(o.transaction_id, already_applied=True)
            if o.error is not None and o.transaction_id in done
            else o
            for o in outcomes
        ]

    async def _run(self, batch: PreparedBatch) -> LSN | None:
        async with self.engine.connect() as conn, watched(conn, self.timeouts.statement) as dog:
            try:
                if batch.pipelined:
                    return await self._pipelined.run(conn, dog, batch)
                return await self._session.run(conn, batch.runnable, batch.outcomes)
            except BaseException:
                if dog is not None and dog.fired:
                    # Discarded here, so that the pool does not try (and log) a
                    # ROLLBACK on a socket that is already shut.
                    with contextlib.suppress(Exception):
                        await conn.invalidate()
                    # from None: the driver's own error (a closed socket, a
                    # pending rollback) says less than this; it stays __context__.
                    raise DatabaseUnavailableError(
                        f"the main database did not answer within {dog.timeout:g} s "
                        "(statement_timeout); the connection was discarded"
                    ) from None
                raise
