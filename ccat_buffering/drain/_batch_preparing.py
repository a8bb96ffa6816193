"""A batch checked and planned before its call: what needs no database.

The checks, the foreign-key-order plan and the first message of a batch cost
client CPU in proportion to its size. The processor prepares the next batch
while the current one waits on the link (:meth:`TransactionExecutor.prepare`),
so that its own call only sends; :class:`BatchPreparer` holds that one batch
until the executor is asked to apply the very same transaction objects.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.engine import Dialect

from ccat_buffering.buffer.retry import classify_failure
from ccat_buffering.drain._grouping import plan
from ccat_buffering.drain._pipelined import PipelinedPath, PreparedBatch, unique
from ccat_buffering.drain.outcome import Outcome, plain_outcome
from ccat_buffering.errors import UnknownColumnError
from ccat_buffering.write.models import Transaction
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["BatchPreparer"]


class BatchPreparer:
    """Checks and plans batches, and holds the one prepared ahead of its call.

    Args:
        registry: The mapped classes steps may name.
        pipelined: Writes the pipeline's message.
        dialect: The main database's dialect (only psycopg pipelines).
    """

    def __init__(self, registry: ModelRegistry, pipelined: PipelinedPath, dialect: Dialect) -> None:
        self.registry = registry
        self.pipelined = pipelined
        self.dialect = dialect
        self._held: PreparedBatch | None = None
        # (model, key fields) found known, with the model's fields: checked once, not per step.
        self._cleared: dict[tuple[str, tuple[str, ...]], frozenset[str]] = {}

    def hold(self, transactions: Sequence[Transaction]) -> None:
        """Prepare a batch ahead of its call, and hold it (one at a time)."""
        self._held = self.prepared(transactions)

    def take(self, transactions: Sequence[Transaction]) -> PreparedBatch:
        """The batch held for the very same transaction objects, in order; else prepared now."""
        held, self._held = self._held, None
        if (
            held is not None
            and len(held.transactions) == len(transactions)
            and all(a is b for a, b in zip(held.transactions, transactions, strict=True))
        ):
            return held
        return self.prepared(transactions)

    def prepared(self, transactions: Sequence[Transaction]) -> PreparedBatch:
        """Check ``transactions``; where they can take the pipeline, plan and write its message."""
        outcomes: list[Outcome] = []
        refs = False  # whether a runnable transaction has a ref(): those never pipeline
        for tx in transactions:
            try:
                refs = self.check(tx) or refs
            except Exception as exc:
                outcomes.append(Outcome(tx.transaction_id, error=exc, kind=classify_failure(exc)))
            else:
                outcomes.append(plain_outcome(tx.transaction_id, False))
        runnable = [(i, tx) for i, tx in enumerate(transactions) if outcomes[i].error is None]
        pipelined = bool(runnable) and not refs and self.dialect.driver == "psycopg"
        batch = PreparedBatch(tuple(transactions), outcomes, runnable, pipelined)
        if batch.pipelined:
            batch.todo, batch.copies = unique(runnable)
            if len(batch.todo) > 1:
                grouped = plan([tx for _, tx in batch.todo], self.registry, without_refs=True)
                if grouped is not None:
                    batch.first = self.pipelined.message(batch.todo, grouped)
        return batch

    def _plainly_known(self, tx: Transaction) -> bool:
        """Whether every step only names known fields, seen the quick way (creates, updates).

        ``False`` for anything else (a key, bases, an unknown model or field):
        :meth:`ModelRegistry.check` decides then, and says what is wrong.
        """
        registry = self.registry
        cleared = self._cleared
        for step in tx.steps:
            values = step.__dict__  # the fields, read without an attribute lookup each
            if (
                values["key"] is not None
                or values["expected"] is not None
                or values["expected_records"]
            ):
                return False
            model = values["model"]
            known = cleared.get((model, values["key_fields"]))
            if known is None:
                try:
                    known = registry.fields(model)
                except Exception:
                    return False
                if not known.issuperset(values["key_fields"]):
                    return False
                if len(cleared) < 1024:  # the key fields of a model: a few per model
                    cleared[(model, values["key_fields"])] = known
            data = values["data"]
            if data is not None and not known.issuperset(data):
                return False
            for record in values["records"] or ():
                if not known.issuperset(record):
                    return False
        return True

    def check(self, tx: Transaction) -> bool:
        """Refuse a transaction naming an unknown model or field, or referring to one.

        Returns:
            Whether it has a ``ref()`` (it cannot go through psycopg's pipeline mode).

        Raises:
            UnknownModelError: A model is not registered.
            UnknownColumnError: A field, or a field a ``ref()`` reads, is not mapped.
        """
        if not self._plainly_known(tx):
            self.registry.check(tx)
        for step in tx.steps:
            if step.has_refs:
                break
        else:
            return False  # the common transaction: no ref() (no list made per step to say so)
        models = {step.step_id: step.model for step in tx.steps}
        for step in tx.steps:
            for ref in step.refs():
                if ref.field not in self.registry.fields(models[ref.step]):
                    raise UnknownColumnError(
                        f"transaction {tx.transaction_id}: step {step.step_id!r} refers to "
                        f"{models[ref.step]}.{ref.field}, which is not a mapped field"
                    )
        return True
