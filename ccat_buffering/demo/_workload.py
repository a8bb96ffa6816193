"""What ``simulate`` writes: observations and poison, on each example schema.

``add_observation`` and ``add_raw_files`` are the one builder of the example
transaction (an observation unit, its raw data package, its files); the
simulation, the tests (``tests/support.py``) and the benchmarks (``bench/``)
all build theirs with it, each with its own names and values.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ccat_buffering.demo.example import (
    Base,
    DataFile,
    ExecutedObsUnit,
    Observation,
    ObservatoryBase,
    RawDataFile,
    RawDataPackage,
)
from ccat_buffering.write.builder import RecordHandle, TransactionBuilder
from ccat_buffering.write.models import Transaction

__all__ = ["SCHEMAS", "Made", "Schema", "add_observation", "add_raw_files"]


Made = tuple[Transaction, Transaction, Any, list[str]]
"""An observation's two transactions, its unit's key (typed) and its file paths."""


@dataclass(frozen=True)
class Schema:
    """One example schema as the simulation uses it: what it writes and what it counts."""

    base: Any
    unit: Any  # the observation's model, keyed by ``id``, with a ``status``
    child: Any  # written by start_observation, pointing at the unit
    child_fk: str
    file: Any  # written by finish_observation, with a unique ``path``
    observation: Callable[[int, str, random.Random], Made]
    poison: Callable[[int, str], Transaction]


def add_observation(
    tx: TransactionBuilder,
    obs_unit_id: int,
    *,
    name: str,
    start_time: dt.datetime,
    status: str = "running",
    mean_pwv: Decimal | None = None,
) -> tuple[RecordHandle, RecordHandle]:
    """Add an observation unit and its raw data package to ``tx`` (the text-key schema).

    Args:
        tx: The transaction being built.
        obs_unit_id: The unit's ``obs_unit_id``.
        name: The package's name.
        start_time: The unit's ``start_time``.
        status: The unit's ``status``.
        mean_pwv: The unit's ``mean_pwv``; left out of the values when ``None``.

    Returns:
        The references of the unit and of the package, for later steps to point at.
    """
    values: dict[str, Any] = {
        "obs_unit_id": obs_unit_id,
        "status": status,
        "start_time": start_time,
    }
    if mean_pwv is not None:
        values["mean_pwv"] = mean_pwv
    obs = tx.create(ExecutedObsUnit, values)
    package = tx.create(RawDataPackage, {"executed_obs_unit_id": obs.id, "name": name})
    return obs, package


def add_raw_files(
    tx: TransactionBuilder, package: RecordHandle, files: Sequence[tuple[str, int]]
) -> None:
    """Add one ``RawDataFile`` per ``(path, size_bytes)`` of ``files`` to ``package``, in one step.

    Args:
        tx: The transaction being built.
        package: The reference of the package (from ``add_observation``).
        files: The files' paths and sizes, in order.
    """
    tx.bulk_create(
        RawDataFile,
        [
            {"raw_data_package_id": package.id, "path": path, "size_bytes": size}
            for path, size in files
        ],
    )


def _observation(i: int, run: str, rng: random.Random) -> Made:
    start = TransactionBuilder("start_observation")
    obs, package = add_observation(
        start,
        i,
        name=f"{run}-pkg-{i:06d}",
        start_time=dt.datetime.now(dt.UTC),
        mean_pwv=Decimal(f"{rng.uniform(0.2, 2.0):.3f}"),
    )
    finish = TransactionBuilder("finish_observation")
    paths = [f"/data/{run}/{i:06d}/scan-{k}.fits" for k in range(2)]
    add_raw_files(finish, package, [(p, 1024 * (k + 1)) for k, p in enumerate(paths)])
    finish.update(
        ExecutedObsUnit, obs.id, {"status": "finished", "end_time": dt.datetime.now(dt.UTC)}
    )
    assert obs.id is not None
    return start.build(), finish.build(), obs.id, paths


def _poison(i: int, run: str) -> Transaction:
    # A file whose package does not exist: the foreign key refuses it every time.
    tx = TransactionBuilder("register_orphan_file")
    tx.bulk_create(
        RawDataFile,
        [{"raw_data_package_id": f"missing-{i}", "path": f"/orphan/{run}/{i}", "size_bytes": 1}],
    )
    return tx.build()


def _uuid_observation(i: int, run: str, rng: random.Random) -> Made:
    # Values as a JSON request carries them: text for the UUID, date, enum and sizes.
    start = TransactionBuilder("start_observation")
    obs = start.create(
        Observation,
        {"target": f"NGC {1000 + i % 500}", "status": "running", "night": "2026-12-01"},
    )
    start.create(
        DataFile,
        {"observation_id": obs.id, "path": f"/data/{run}/{i:06d}/setup.json", "size_bytes": "512"},
    )
    finish = TransactionBuilder("finish_observation")
    paths = [f"/data/{run}/{i:06d}/scan-{k}.fits" for k in range(2)]
    finish.bulk_create(
        DataFile,
        [
            {"observation_id": obs.id, "path": p, "size_bytes": str(rng.randint(1, 2**40))}
            for p in paths
        ],
    )
    finish.update(
        Observation,
        obs.id,
        {"status": "finished", "finished_at": dt.datetime.now(dt.UTC).isoformat()},
    )
    return start.build(), finish.build(), obs.value, paths


def _uuid_poison(i: int, run: str) -> Transaction:
    # A file of an observation that does not exist: refused by the foreign key.
    tx = TransactionBuilder("register_orphan_file")
    tx.create(
        DataFile,
        {"observation_id": str(uuid.uuid4()), "path": f"/orphan/{run}/{i}", "size_bytes": 1},
    )
    return tx.build()


SCHEMAS = {
    "text": Schema(
        Base, ExecutedObsUnit, RawDataPackage, "executed_obs_unit_id", RawDataFile,
        _observation, _poison,
    ),
    "uuid": Schema(
        ObservatoryBase, Observation, DataFile, "observation_id", DataFile,
        _uuid_observation, _uuid_poison,
    ),
}  # fmt: skip
"""The example schemas ``simulate`` can run on: text keys, or native UUID keys."""
