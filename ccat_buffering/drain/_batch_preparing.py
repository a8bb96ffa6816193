"""A batch checked and planned before its call: what needs no database.

The checks, the foreign-key-order plan and the first message of a batch cost
client CPU in proportion to its size. The processor prepares the next batch
while the current one waits on the link (:meth:`TransactionExecutor.prepare`),
so that its own call only sends; :class:`BatchPreparer` holds that one batch
until the executor is asked to apply the very same transaction objects.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy.engine import Dialect

from ccat_buffering.buffer.retry import classify_failure
from ccat_buffering.drain._grouping import Planner
from ccat_buffering.drain._pipelined import PipelinedPath, PreparedBatch
from ccat_buffering.drain.outcome import Outcome
from ccat_buffering.errors import UnknownColumnError
from ccat_buffering.write.models import Operation, Step, Transaction
from ccat_buffering.write.registry import ModelRegistry

__all__ = ["BatchPreparer"]

_CREATE = Operation.CREATE
_BULK_CREATE = Operation.BULK_CREATE


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
        # Per model found known: the key fields it was found with, its fields and
        # its key fields: checked once, not per step.
        self._cleared: dict[str, tuple[tuple[str, ...], frozenset[str], frozenset[str]]] = {}

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
        """Check ``transactions``; where they can take the pipeline, plan and write its message.

        One pass: each transaction is checked, and, while the batch can still
        take the pipeline, given to the planner, which cuts the rows into the
        message's INSERTs as it goes.
        """
        # A refusal each; a runnable one's outcome is made when read (waiting).
        outcomes: list[Outcome | None] = [None] * len(transactions)
        runnable: list[tuple[int, Transaction]] = []
        todo: list[tuple[int, Transaction]] = []
        copies: list[tuple[int, int]] = []
        first_of: dict[str, int] = {}
        psycopg = self.dialect.driver == "psycopg"
        # Only the pipeline's message needs the plan (a ref() in the batch: no pipeline).
        planner: Planner | None = Planner(self.registry, without_refs=True) if psycopg else None
        refs = False  # whether a runnable transaction has a ref(): those never pipeline
        quick, check = self._plainly_known, self.check
        # The ledger rows' values, gathered on the way (the fields are read here already).
        endpoints: list[str] = []
        created: list[dt.datetime] = []
        for index, tx in enumerate(transactions):
            fields = tx.__dict__  # read without an attribute lookup each (a model's are slow)
            transaction_id, steps = fields["transaction_id"], fields["steps"]
            repeat = transaction_id in first_of
            # The planner checks the fields of the rows it takes (it reads them anyway).
            fed = planner is not None and not repeat
            has_refs = quick(steps, fed)  # check(), its common case without a call more
            if has_refs is not False:
                try:
                    has_refs = check(tx, steps)
                except Exception as exc:
                    outcomes[index] = Outcome(transaction_id, error=exc, kind=classify_failure(exc))
                    continue
                fed = False  # checked whole
            if planner is not None and not has_refs and not repeat and not planner.take(steps):
                unknown = planner.unknown
                planner = None  # the batch goes one transaction at a time, unless:
                if fed:
                    try:  # what the planner did not take is not checked yet
                        check(tx, steps)
                    except Exception as exc:
                        outcomes[index] = Outcome(
                            transaction_id, error=exc, kind=classify_failure(exc)
                        )
                        if unknown:  # planned again without it
                            planner = self._planner(todo)
                        continue
            pair = (index, tx)
            runnable.append(pair)
            if refs:
                continue
            if has_refs:
                refs, planner = True, None
                continue
            if repeat:
                # The same transaction buffered twice (a lost reply, resubmitted):
                # it is applied once, and the copy shares the first one's fate.
                copies.append((index, first_of[transaction_id]))
                continue
            first_of[transaction_id] = index
            todo.append(pair)
            endpoints.append(fields["endpoint"])
            created.append(fields["created_at"])
        pipelined = bool(runnable) and not refs and psycopg
        batch = PreparedBatch(tuple(transactions), outcomes, runnable, pipelined)
        if pipelined:
            batch.todo, batch.copies = todo, copies
            if len(todo) > 1 and planner is not None:
                grouped = planner.plan()
                if grouped is not None:
                    ledger = (list(first_of), endpoints, created)
                    batch.first = self.pipelined.message(todo, grouped, ledger)
        return batch

    def _planner(self, todo: list[tuple[int, Transaction]]) -> Planner | None:
        """A planner that took ``todo`` (checked already); ``None`` when they cannot be grouped."""
        planner = Planner(self.registry, without_refs=True)
        for _, tx in todo:
            if not planner.add(tx):
                return None
        return planner

    def _plainly_known(self, steps: Sequence[Step], creates_checked: bool = False) -> bool | None:
        """Whether a step has a ``ref()``, where each plainly names known fields; else ``None``.

        Plainly: fields of the model, a key naming the model's key fields.
        ``None`` for anything else (an unknown model or field, a key naming
        other fields): :meth:`ModelRegistry.check` decides then, and says
        what is wrong. With ``creates_checked`` the fields of created rows are
        left to the planner, which reads them anyway (:class:`Planner`).
        """
        cleared = self._cleared
        refs = False
        for step in steps:
            values = step.__dict__  # the fields, read without an attribute lookup each
            found = cleared.get(values["model"])
            key_fields = values["key_fields"]
            if found is None or (found[0] is not key_fields and found[0] != key_fields):
                found = self._clear(values["model"], key_fields)
                if found is None:
                    return None
            _, known, keyed_by = found
            op = values["operation"]
            if not (creates_checked and (op is _CREATE or op is _BULK_CREATE)):
                data = values["data"]
                if data is not None and not known.issuperset(data):
                    return None
                records = values["records"]
                if records:
                    for record in records:
                        if not known.issuperset(record):
                            return None
            key = values["key"]
            if key is not None and key.keys() != keyed_by:
                return None
            expected = values["expected"]
            if expected is not None and not known.issuperset(expected):
                return None
            records = values["expected_records"]
            if records:
                for record in records:
                    if not known.issuperset(record):
                        return None
            # A step finds its refs once (cached with its fields): read them there.
            found_refs = values.get("_refs")
            if found_refs is None:
                refs = step.has_refs or refs
            elif found_refs:
                refs = True
        return refs

    def _clear(
        self, model: str, key_fields: tuple[str, ...]
    ) -> tuple[tuple[str, ...], frozenset[str], frozenset[str]] | None:
        """The model's fields and key fields, where it is known and has ``key_fields``."""
        try:
            known = self.registry.fields(model)
            keyed_by = frozenset(self.registry.key_fields(model))
        except Exception:
            return None
        if not known.issuperset(key_fields):
            return None
        found = self._cleared[model] = (key_fields, known, keyed_by)
        return found

    def check(self, tx: Transaction, steps: Sequence[Step] | None = None) -> bool:
        """Refuse a transaction naming an unknown model or field, or referring to one.

        Args:
            tx: The transaction.
            steps: Its steps, where the caller read them already.

        Returns:
            Whether it has a ``ref()`` (it cannot go through psycopg's pipeline mode).

        Raises:
            UnknownModelError: A model is not registered.
            UnknownColumnError: A field, or a field a ``ref()`` reads, is not mapped.
        """
        refs = self._plainly_known(tx.steps if steps is None else steps)
        if refs is None:
            self.registry.check(tx)
            refs = any(step.has_refs for step in tx.steps)
        if not refs:
            return False  # the common transaction: no ref()
        models = {step.step_id: step.model for step in tx.steps}
        for step in tx.steps:
            for ref in step.refs():
                if ref.field not in self.registry.fields(models[ref.step]):
                    raise UnknownColumnError(
                        f"transaction {tx.transaction_id}: step {step.step_id!r} refers to "
                        f"{models[ref.step]}.{ref.field}, which is not a mapped field"
                    )
        return True
