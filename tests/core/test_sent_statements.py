"""What the pipelined path sends for a mixed batch, statement by statement (issue #23).

The preparer builds the plan and the message in one pass; these batches are
rendered statement by statement (SQL, parameters, owner, flags) and compared
with ``sent_statements.txt``, recorded from the tree before that change. Run
with ``CCAT_RECORD_SENT=1`` to print the rendering instead of comparing it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import enum
import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from ccat_buffering.demo.example import (
    Base,
    DataFile,
    ExecutedObsUnit,
    Observation,
    ObservationStatus,
    ObservatoryBase,
    RawDataFile,
    RawDataPackage,
)
from ccat_buffering.drain import _pipeline
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Transaction
from ccat_buffering.write.registry import ModelRegistry

EXPECTED = Path(__file__).with_name("sent_statements.txt")
FIXED = dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def ids(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every UUID the builder makes, in order: the same text every run."""
    counter = itertools.count(1)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=next(counter)))
    yield


def _fixed(tx: TransactionBuilder) -> Transaction:
    return tx.build().model_copy(update={"created_at": FIXED})


def _start(i: int, *, pwv: bool = False, reordered: bool = False) -> tuple[Transaction, str, str]:
    tx = TransactionBuilder("start")
    values: dict[str, Any] = {"obs_unit_id": i, "status": "running", "start_time": FIXED}
    if reordered:  # the same fields in another order: one chunk with the first row's order
        values = {"start_time": FIXED, "status": "running", "obs_unit_id": i}
    if pwv:  # another column set: a chunk of its own
        values["mean_pwv"] = decimal.Decimal("0.5")
    obs = tx.create(ExecutedObsUnit, values)
    pkg = tx.create(RawDataPackage, {"executed_obs_unit_id": obs.id, "name": f"p{i}"})
    tx.bulk_create(
        RawDataFile,
        [{"raw_data_package_id": pkg.id, "path": f"/{i}/{k}", "size_bytes": k} for k in range(2)],
    )
    assert obs.id and pkg.id
    return _fixed(tx), obs.id, pkg.id


def _planned_batch() -> list[Transaction]:
    """Creates in several tables (children named first), updates, bulk updates: grouped."""
    parents_later = TransactionBuilder("files_first")  # a child table named before its parent
    parents_later.bulk_create(
        RawDataFile, [{"raw_data_package_id": "elsewhere", "path": "/x", "size_bytes": 1}]
    )
    parents_later.create(
        ExecutedObsUnit, {"obs_unit_id": 0, "status": "running", "start_time": FIXED}
    )
    unknown = TransactionBuilder("unknown")
    unknown.create("RawDataPackage", {"name": "u", "colour": "red"})
    batch = [_fixed(parents_later), _fixed(unknown)]
    first, obs_1, pkg_1 = _start(1)
    children_first = TransactionBuilder("files")
    children_first.bulk_create(
        RawDataFile, [{"raw_data_package_id": pkg_1, "path": "/late", "size_bytes": 9}]
    )
    batch += [first, _fixed(children_first)]
    second, obs_2, pkg_2 = _start(2, pwv=True)
    third, _, _ = _start(3, reordered=True)
    batch += [second, third, _start(4)[0]]
    finish = TransactionBuilder("finish")
    finish.update(ExecutedObsUnit, obs_1, {"status": "done", "end_time": FIXED})
    finish.update(ExecutedObsUnit, obs_2, {"status": "aborted"}, expected={"status": "running"})
    finish.bulk_update(
        RawDataPackage, [{"id": pkg_1, "name": "renamed-1"}, {"id": pkg_2, "name": "renamed-2"}]
    )
    batch.append(_fixed(finish))
    batch.append(batch[4])  # a repeat: sent once
    return batch


def _unplanned_batch() -> list[Transaction]:
    """A delete and a generated key: one sync group per transaction."""
    first, obs_1, pkg_1 = _start(5)
    generated = TransactionBuilder("generated")
    generated.create(RawDataFile, {"raw_data_package_id": pkg_1, "path": "/g", "size_bytes": 3})
    deleting = TransactionBuilder("delete")
    deleting.delete(RawDataFile, 7)
    deleting.update(ExecutedObsUnit, obs_1, {"status": "done"})
    return [first, _fixed(generated), _fixed(deleting)]


def _observatory_batch() -> list[Transaction]:
    """Native UUID keys, an Enum, Python-side defaults."""
    batch = []
    for i in range(3):
        tx = TransactionBuilder("observe")
        obs = tx.create(
            Observation,
            {
                "target": f"NGC {i}",
                "status": ObservationStatus.ABORTED if i else ObservationStatus.RUNNING,
                "night": dt.date(2001, 2, i + 1),
                "created_at": FIXED,
                "id": uuid.UUID(int=1000 + i),
            },
        )
        tx.bulk_create(
            DataFile,
            [
                {
                    "observation_id": obs.id,
                    "path": f"/o/{i}/{k}",
                    "size_bytes": k,
                    "id": uuid.UUID(int=2000 + 10 * i + k),
                }
                for k in range(2)
            ],
        )
        tx.update(Observation, obs.id, {"finished_at": FIXED})
        batch.append(_fixed(tx))
    return batch


def _value(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat() if value.year == 2001 else "<now>"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    return repr(value)


def _rendered(pipeline: _pipeline.Pipeline) -> list[str]:
    lines = []
    for g, group in enumerate(pipeline.groups):
        lines.append(f"-- group {g}")
        for s in group:
            missing = None if s.missing is None else f"{type(s.missing).__name__}: {s.missing}"
            lines.append(
                f"{s.sql}\n   params={_value(s.params)} owner={s.owner} ledger={s.ledger} "
                f"positional={s.positional} returns={s.returns} missing={missing}"
            )
    return lines


class _Raw:
    driver_connection = None


class _Conn:
    async def get_raw_connection(self) -> _Raw:
        return _Raw()


def _sent(
    registry: ModelRegistry, batch: list[Transaction], fail_first: bool, monkeypatch: Any
) -> list[str]:
    """What the executor's pipelined path sends for ``batch`` (the first message failing)."""
    engine = create_async_engine(URL)
    executor = TransactionExecutor(engine, registry, site="here")
    sent: list[list[str]] = []

    async def send(self: _pipeline.Pipeline, driver: Any, touch: Any = None) -> Any:
        sent.append(_rendered(self))
        result = _pipeline.PipelineResult()
        if fail_first and len(sent) == 1:
            result.errors[0] = ValueError("refused")
            result.failed_statements[0] = self.groups[0][3]
            result.rows[1] = [(batch[0].transaction_id,)]  # the ledger holds the first
        else:
            result.rows[10**6] = [("0/16B3748",)]
        return result

    monkeypatch.setattr(_pipeline.Pipeline, "send", send)
    executor.prepare(batch)
    prepared = executor.preparer.take(batch)
    lines = [f"pipelined={prepared.pipelined} planned={prepared.first is not None}"]
    asyncio.run(executor._pipelined.run(_Conn(), None, prepared))  # type: ignore[arg-type]
    for outcome in prepared.outcomes:
        lines.append(
            f"outcome {outcome.transaction_id} applied={outcome.applied} "
            f"already={outcome.already_applied} error={outcome.error!r} kind={outcome.kind} "
            f"generated={dict(outcome.generated)}"
        )
    for n, message in enumerate(sent):
        lines.append(f"== message {n}")
        lines += message
    return lines


def test_the_pipeline_sends_what_it_sent_before_the_one_pass_preparer(
    ids: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = ModelRegistry.from_base(Base)
    observatory = ModelRegistry.from_base(ObservatoryBase)
    planned, unplanned, observed = _planned_batch(), _unplanned_batch(), _observatory_batch()
    lines = []
    for name, registry, batch, fail_first in [
        ("planned", example, planned, False),
        ("planned, the first message failing", example, planned, True),
        ("unplanned", example, unplanned, False),
        ("observatory", observatory, observed, False),
    ]:
        lines.append(f"#### {name}")
        lines += _sent(registry, batch, fail_first, monkeypatch)
    text = "\n".join(lines) + "\n"
    if os.environ.get("CCAT_RECORD_SENT"):
        print(text, end="")
        return
    assert text == EXPECTED.read_text()
