"""What ``simulate`` writes: observations and poison, on each example schema."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ccat_buffering.builder import TransactionBuilder
from ccat_buffering.demo.example import (
    Base,
    DataFile,
    ExecutedObsUnit,
    Observation,
    ObservatoryBase,
    RawDataFile,
    RawDataPackage,
)
from ccat_buffering.models import Transaction

__all__ = ["SCHEMAS", "Made", "Schema"]


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


def _observation(i: int, run: str, rng: random.Random) -> Made:
    start = TransactionBuilder("start_observation")
    obs = start.create(
        ExecutedObsUnit,
        {
            "obs_unit_id": i,
            "status": "running",
            "start_time": dt.datetime.now(dt.UTC),
            "mean_pwv": Decimal(f"{rng.uniform(0.2, 2.0):.3f}"),
        },
    )
    package = start.create(
        RawDataPackage, {"executed_obs_unit_id": obs.id, "name": f"{run}-pkg-{i:06d}"}
    )
    finish = TransactionBuilder("finish_observation")
    paths = [f"/data/{run}/{i:06d}/scan-{k}.fits" for k in range(2)]
    finish.bulk_create(
        RawDataFile,
        [
            {"raw_data_package_id": package.id, "path": p, "size_bytes": 1024 * (k + 1)}
            for k, p in enumerate(paths)
        ],
    )
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
