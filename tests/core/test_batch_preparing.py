"""The preparer's quick check against the registry's full one (issue #23)."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from ccat_buffering.demo.example import Base
from ccat_buffering.drain.executor import TransactionExecutor
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Transaction
from ccat_buffering.write.registry import ModelRegistry

PACKAGE = "1b7c6a4e-5d1f-4f0e-9a57-2f1c3b8d9e10"


def _cases() -> dict[str, Transaction]:
    def built(*steps: tuple[str, str, object, tuple[str, ...]]) -> Transaction:
        tx = TransactionBuilder("case")
        for operation, model, values, _ in steps:
            if operation == "create":
                tx.create(model, values)  # type: ignore[arg-type]
            else:
                tx.bulk_create(model, values)  # type: ignore[arg-type]
        made = tx.build()
        # The builder keys every step by "id": other key fields as an entry could name them.
        keyed = [
            step.model_copy(update={"key_fields": key_fields})
            for step, (_, _, _, key_fields) in zip(made.steps, steps, strict=True)
        ]
        return made.model_copy(update={"steps": keyed})

    known = ("create", "RawDataPackage", {"id": PACKAGE, "name": "p"}, ("id",))
    files = ("bulk_create", "RawDataFile", [{"path": "/a", "size_bytes": 1}], ("id",))
    return {
        "known": built(known, files),
        "unknown field": built(known, ("create", "RawDataPackage", {"colour": 1}, ("id",))),
        "unknown field in a record": built(
            ("bulk_create", "RawDataFile", [{"path": "/a"}, {"path": "/b", "hue": 2}], ("id",))
        ),
        "unknown key field, model seen before": built(
            known, ("create", "RawDataPackage", {"name": "q"}, ("nope",))
        ),
        "unknown model": built(known, ("create", "Nothing", {"id": 1}, ("id",))),
        "a ref to an unknown field": _referring("colour"),
        "a ref to a known field": _referring("id"),
        **_keyed(),
    }


def _keyed() -> dict[str, Transaction]:
    """Updates and deletes: a key, a base (``expected``), per-record bases."""

    def one(build: object, key: dict[str, object] | None = None) -> Transaction:
        tx = TransactionBuilder("keyed")
        build(tx)  # type: ignore[operator]
        made = tx.build()
        if key is None:
            return made
        steps = [made.steps[0].model_copy(update={"key": key})]
        return made.model_copy(update={"steps": steps})

    return {
        "an update with a base": one(
            lambda tx: tx.update("RawDataPackage", PACKAGE, {"name": "q"}, expected={"name": "p"})
        ),
        "an update of an unknown field": one(
            lambda tx: tx.update("RawDataPackage", PACKAGE, {"hue": 1})
        ),
        "a base naming an unknown field": one(
            lambda tx: tx.update("RawDataPackage", PACKAGE, {"name": "q"}, expected={"hue": 1})
        ),
        "a key naming other fields": one(
            lambda tx: tx.update("RawDataPackage", PACKAGE, {"name": "q"}), {"name": "p"}
        ),
        "a key naming an unknown field": one(
            lambda tx: tx.delete("RawDataPackage", PACKAGE), {"id": PACKAGE, "hue": 1}
        ),
        "an empty key": one(lambda tx: tx.delete("RawDataPackage", PACKAGE), {}),
        "a delete": one(lambda tx: tx.delete("RawDataPackage", PACKAGE)),
        "a bulk update with bases": one(
            lambda tx: tx.bulk_update(
                "RawDataPackage", [{"id": PACKAGE, "name": "z"}], expected=[{"name": "y"}]
            )
        ),
        "a bulk update's base naming an unknown field": one(
            lambda tx: tx.bulk_update(
                "RawDataPackage", [{"id": PACKAGE, "name": "z"}], expected=[{"hue": 2}]
            )
        ),
    }


def _referring(field: str) -> Transaction:
    tx = TransactionBuilder("refs")
    package = tx.create("RawDataPackage", {"name": "p"})
    tx.create("RawDataFile", {"raw_data_package_id": package.ref(field), "path": "/a"})
    return tx.build()


def _answer(check: object, tx: Transaction) -> tuple[str, str]:
    try:
        check(tx)  # type: ignore[operator]
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return "ok", ""


@pytest.mark.parametrize("order", ["as listed", "reversed"])
def test_the_quick_check_refuses_what_the_registry_refuses_with_its_message(order: str) -> None:
    registry = ModelRegistry.from_base(Base)
    engine = create_async_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    preparer = TransactionExecutor(engine, registry).preparer
    cases = list(_cases().items())
    if order == "reversed":
        cases.reverse()
    # Twice: the second round runs with every (model, key fields) pair already cleared.
    for _ in range(2):
        for name, tx in cases:
            full = _answer(registry.check, tx)
            quick = _answer(preparer.check, tx)
            if full[0] == "ok":  # the refs' own check, which the registry does not make
                assert quick[0] in ("ok", "UnknownColumnError"), name
                assert (quick[0] == "ok") == (name != "a ref to an unknown field"), name
            else:
                assert quick == full, name


def test_has_refs_says_what_refs_says() -> None:
    for tx in _cases().values():
        for step in tx.steps:
            assert step.has_refs == bool(step.refs())


def _good(i: int) -> Transaction:
    tx = TransactionBuilder("good")
    package = tx.create("RawDataPackage", {"name": f"good-{i}", "executed_obs_unit_id": "u"})
    tx.bulk_create("RawDataFile", [{"raw_data_package_id": package.id, "path": f"/{i}"}])
    return tx.build()


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_a_batch_refuses_what_the_registry_refuses_and_plans_the_rest(driver: str) -> None:
    # In a batch the planner checks the fields of the rows it takes: the same
    # refusals, and the others still planned (one message) as without the refused one.
    registry = ModelRegistry.from_base(Base)
    engine = create_async_engine(f"postgresql+{driver}://postgres@127.0.0.1:5432/postgres")
    preparer = TransactionExecutor(engine, registry).preparer
    for name, tx in _cases().items():
        full = _answer(registry.check, tx)
        batch = [_good(1), tx, _good(2)]
        prepared = preparer.prepared(batch)
        outcome = prepared.outcomes[1]
        if full[0] == "ok":
            assert outcome.error is None or name == "a ref to an unknown field", name
        else:
            assert outcome.error is not None, name
            assert (type(outcome.error).__name__, str(outcome.error)) == full, name
            without = preparer.prepared([batch[0], batch[2]])
            assert [o.error for o in prepared.outcomes[::2]] == [None, None], name
            assert (prepared.first is None) == (without.first is None), name
            if driver == "psycopg":
                assert prepared.first is not None, name
