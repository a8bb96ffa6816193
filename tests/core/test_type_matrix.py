"""A buffered write means what the direct write means, for every common column type.

Over {SQLite, PostgreSQL} x {memory, Redis} x {secondary, main}: each input of
``type_cases`` is written through the library and the row it lands as is
compared, value, Python type and stored text, with a plain SQLAlchemy Core
insert of the value it must mean; reads before the drain (from the buffer)
are compared with reads after it (from the database alone). Inputs a column
cannot take are refused at build, naming the step, field, value and type.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pg import fresh_database
from services import REDIS_URL, forget_site, redis_client, require_redis
from sqlalchemy import Text, cast, insert, select
from sqlalchemy.orm import DeclarativeBase
from type_cases import CASES, PG_CASES, Case, PgBase, PgSample, Sample, TypedBase, table

from ccat_buffering import BufferingCoordinator, BufferingSettings, TransactionBuilder
from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.read.reads import Reads
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.models import TransactionState
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_memory import MemoryBackend

DOCS = Path(__file__).parents[2] / "docs" / "_type_matrix.rst"


@asynccontextmanager
async def typed_site(
    tmp_path: Path, database: str, backend: str, site_type: str, bases: list[type[DeclarativeBase]]
) -> AsyncIterator[BufferingCoordinator]:
    """A coordinator on the given database and backend, with ``bases``' tables made."""
    async with AsyncExitStack() as stack:
        if database == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
        else:
            url = await stack.enter_async_context(fresh_database())
            if database == "psycopg":  # the pipelined drain's driver
                url = url.replace("+asyncpg", "+psycopg", 1)
        site_name = new_site_name()
        if backend == "redis":
            await require_redis()
        settings = BufferingSettings(
            site_name=site_name,
            site_type=site_type,  # type: ignore[arg-type]
            backend_url="memory://" if backend == "memory" else REDIS_URL,
            database_url=url,
            poll_interval=0.01,
            replication_poll_interval=0.01,
        )
        registry = ModelRegistry(m.class_ for base in bases for m in base.registry.mappers)
        site = await stack.enter_async_context(
            BufferingCoordinator.from_settings(settings, registry=registry, start=False)
        )
        async with site.engine.begin() as conn:
            for base in bases:
                await conn.run_sync(base.metadata.create_all)
        await site.prepare_database()
        try:
            yield site
        finally:
            if backend == "redis":
                client = await redis_client()
                await forget_site(client, f"site:{{{site_name}}}:*")
                await client.aclose()  # type: ignore[attr-defined]


def database_only(site: BufferingCoordinator) -> Reads:
    """Reads that see the database alone, as after replication released the caches."""
    return Reads(MemoryBackend(new_site_name()).cache, site.registry, site.engine)


def typed(value: Any) -> tuple[type[Any], Any]:
    return type(value), value


async def stored(
    site: BufferingCoordinator, model: type[Any], ids: list[uuid.UUID]
) -> dict[Any, Any]:
    """Per id, each column's value and its stored text, read with plain SQLAlchemy."""
    columns = list(model.__table__.columns)
    statement = select(*columns, *(cast(c, Text) for c in columns)).where(model.id.in_(ids))
    async with site.engine.connect() as conn:
        rows = (await conn.execute(statement)).all()
    n = len(columns)
    return {
        row[0]: {c.key: (typed(row[i]), row[n + i]) for i, c in enumerate(columns)} for row in rows
    }


def _case_id(case: Case) -> str:
    return f"{case.field}-{case.given!r}"


@pytest.mark.parametrize("case", [c for c in [*CASES, *PG_CASES] if c.refused], ids=_case_id)
def test_inputs_a_column_cannot_take_are_refused_at_build(case: Case) -> None:
    model = PgSample if case in PG_CASES else Sample
    tx = TransactionBuilder("typed")
    with pytest.raises(TransactionValidationError) as by_class:
        tx.create(model, {case.field: case.given})
    message = str(by_class.value)
    assert f"step 0 (create {model.__name__})" in message
    assert f"{model.__name__}.{case.field} = {case.given!r}" in message
    assert "the column expects" in message
    # Given by name, it is refused at build or by the registry at submit, before
    # anything is stored.
    by_name = TransactionBuilder("typed")
    by_name.create(model.__name__, {case.field: case.given})
    registry = ModelRegistry([model])
    with pytest.raises(TransactionValidationError, match=case.field):
        registry.convert(by_name.build())


def test_the_docs_table_is_generated_from_the_cases() -> None:
    assert DOCS.read_text() == table(), (
        "regenerate: python tests/type_cases.py > docs/_type_matrix.rst"
    )


MATRIX = [
    pytest.param(database, backend, site_type, id=f"{database}-{backend}-{site_type}")
    for database in ("sqlite", "postgresql", "psycopg")
    for backend in ("memory", "redis")
    for site_type in ("secondary", "main")
]


@pytest.mark.parametrize(("database", "backend", "site_type"), MATRIX)
async def test_every_type_lands_as_a_plain_insert_of_what_it_means(
    tmp_path: Path, database: str, backend: str, site_type: str
) -> None:
    bases: list[type[DeclarativeBase]] = [TypedBase]
    groups: list[tuple[type[Any], list[Case]]] = [(Sample, [c for c in CASES if not c.refused])]
    if database != "sqlite":
        bases.append(PgBase)
        groups.append((PgSample, [c for c in PG_CASES if not c.refused]))
    async with typed_site(tmp_path, database, backend, site_type, bases) as site:
        tx = TransactionBuilder("typed")
        written: list[tuple[type[Any], uuid.UUID, Case]] = []
        for model, cases in groups:
            for i, case in enumerate(cases):
                key = uuid.uuid4()
                # Half by class (converted at build), half by name (converted at submit).
                tx.create(model if i % 2 else model.__name__, {"id": key, case.field: case.given})
                written.append((model, key, case))
        transaction = tx.build()
        status = await site.submit(transaction)
        before: dict[uuid.UUID, dict[str, Any]] = {}
        if site_type == "secondary":
            assert status.state is TransactionState.BUFFERED
            for model, key, _ in written:
                record = await site.reads.get(model, str(key))
                assert record is not None
                before[key] = record
            assert await site.processor.drain(timeout=30)
        state = (await site.status(transaction.transaction_id)).state  # type: ignore[union-attr]
        assert state in (TransactionState.COMMITTED, TransactionState.REPLICATED)

        # The same values, written by plain SQLAlchemy Core.
        plain: dict[uuid.UUID, uuid.UUID] = {}
        async with site.engine.begin() as conn:
            for model, key, case in written:
                plain[key] = uuid.uuid4()
                values = {"id": plain[key], case.field: case.expected}
                await conn.execute(insert(model.__table__), [values])
        after = database_only(site)
        for model, _ in groups:
            keys = [k for m, k, _ in written if m is model]
            rows = await stored(site, model, [*keys, *(plain[k] for k in keys)])
            for m, key, case in written:
                if m is not model:
                    continue
                ours, theirs = rows[key][case.field], rows[plain[key]][case.field]
                assert ours == theirs, f"{case}: applied {ours}, plain insert {theirs}"
                shown = await after.get(model, key)
                assert shown is not None
                value = shown[case.field]
                assert typed(value) == typed(case.expected), (
                    f"{case}: read after {value!r}, expected {case.expected!r}"
                )
                if key in before:
                    seen = before[key][case.field]
                    assert typed(seen) == typed(value), (
                        f"{case}: read before the drain {seen!r}, after {value!r}"
                    )


def test_refused_and_converted_cases_cover_every_column() -> None:
    covered = {c.field for c in CASES if c.refused} & {c.field for c in CASES if not c.refused}
    assert covered == {c.key for c in Sample.__table__.columns} - {"id"}
