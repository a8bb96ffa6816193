"""Column rules: what the builder and the registry do with values, defaults and keys."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, Integer, String, Table, TypeDecorator, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccat_buffering.errors import ConfigurationError, TransactionValidationError
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Ref, Transaction
from ccat_buffering.write.registry import ModelRegistry


class Upper(TypeDecorator[str]):
    impl = String(16)
    cache_ok = True


def _slug(context: Any) -> str:
    return str(context.get_current_parameters()["title"]).lower().replace(" ", "-")


class Base(DeclarativeBase):
    pass


class Short(Base):
    __tablename__ = "short"
    code: Mapped[str] = mapped_column(String(8), primary_key=True)
    shout: Mapped[str | None] = mapped_column(Upper)


class Defaulted(Base):
    __tablename__ = "defaulted"
    code: Mapped[str] = mapped_column(String(8), primary_key=True, default=lambda: "made")
    title: Mapped[str] = mapped_column(String(64))
    slug: Mapped[str] = mapped_column(String(64), default=_slug)
    version: Mapped[int] = mapped_column(Integer, default=1, onupdate=2)


class Native(Base):
    __tablename__ = "native"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    other: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("native.id"))


tags = Table(
    "tags",
    Base.metadata,
    Column("native_id", ForeignKey("native.id"), primary_key=True),
    Column("tag", String(16), primary_key=True),
)


def test_a_text_key_too_short_for_a_uuid_is_not_made_one() -> None:
    with pytest.raises(TransactionValidationError, match=r"Short\.code is String\(length=8\)"):
        TransactionBuilder("t").create(Short, {})
    handle = TransactionBuilder("t").create(Short, {"code": "abc"})
    assert handle.id == "abc"


def test_a_key_column_default_makes_the_key() -> None:
    handle = TransactionBuilder("t").create(Defaulted, {"title": "M 31"})
    assert (handle.id, handle.value) == ("made", "made")


def test_scalar_callable_and_context_defaults_run_at_write_and_onupdate_on_updates() -> None:
    tx = TransactionBuilder("t")
    tx.create(Defaulted, {"title": "Big Nebula"})
    tx.update(Defaulted, "made", {"title": "x"})
    tx.bulk_update(Defaulted, [{"code": "made"}, {"code": "made", "version": 9}])
    steps = tx.build().steps
    assert steps[0].data == {
        "title": "Big Nebula",
        "code": "made",
        "slug": "big-nebula",
        "version": 1,
    }
    assert steps[1].data == {"title": "x", "version": 2}
    assert steps[2].records == [{"code": "made", "version": 2}, {"code": "made", "version": 9}]


def test_a_native_uuid_key_is_a_uuid_and_its_text_works_in_later_steps() -> None:
    tx = TransactionBuilder("t")
    first = tx.create(Native, {})
    second = tx.create(Native, {"other": first.id})
    assert type(first.value) is uuid.UUID and first.id == str(first.value)
    data = tx.build().steps[1].data
    assert data is not None and data["other"] == first.value
    assert second.value is not None


def test_type_decorators_pass_through_and_refs_stay_refs() -> None:
    tx = TransactionBuilder("t")
    made = tx.create(Native, {})
    tx.create(Short, {"code": "a", "shout": 12})  # its own Python side: not ours to judge
    tx.update(Native, made.ref("id"), {"other": made.ref("id")})
    steps = tx.build().steps
    assert steps[1].data == {"code": "a", "shout": 12}
    assert steps[2].key == {"id": Ref(step="s0", field="id")}


def test_converting_twice_changes_nothing() -> None:
    registry = ModelRegistry([Native, Defaulted, Short])
    tx = TransactionBuilder("t")
    tx.create("Native", {"id": str(uuid.UUID(int=7))})
    once = registry.convert(tx.build())
    # Read back from the buffer, the steps are not known as converted: converted again.
    twice = registry.convert(Transaction.from_json(once.to_json()))
    assert once.steps == twice.steps
    assert once.steps[0].data == {"id": uuid.UUID(int=7)}
    back = Transaction.from_json(once.to_json())
    assert back.steps[0].data == {"id": uuid.UUID(int=7)}


def test_a_name_the_builder_can_resolve_is_converted_as_a_class_is() -> None:
    registry = ModelRegistry([Native, Defaulted, Short])
    by_name = TransactionBuilder("t", registry=registry)
    handle = by_name.create("Defaulted", {"title": "T"})
    assert handle.id == "made"
    assert by_name.build().steps[0].data == {
        "title": "T",
        "code": "made",
        "slug": "t",
        "version": 1,
    }


def test_a_plain_association_table_is_refused_with_the_fix() -> None:
    with pytest.raises(TransactionValidationError, match=r"'tags' is a plain Table.*__table__"):
        TransactionBuilder("t").create(tags, {"native_id": uuid.uuid4(), "tag": "x"})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"'tags' is a plain Table.*__table__ = tags"):
        ModelRegistry([tags])  # type: ignore[list-item]


def test_none_for_a_not_null_column_is_refused() -> None:
    with pytest.raises(TransactionValidationError, match=r"Defaulted\.title = None"):
        TransactionBuilder("t").update(Defaulted, "made", {"title": None})


def test_aware_and_naive_datetimes_are_told_apart() -> None:
    from type_cases import Sample

    tx = TransactionBuilder("t")
    tx.create(Sample, {"id": uuid.UUID(int=1), "aware": "2026-12-01T12:00:00+02:00"})
    data = tx.build().steps[0].data
    assert data is not None and data["aware"] == dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)
    assert data["aware"].utcoffset() == dt.timedelta(0)


def test_a_converted_transaction_equals_itself_read_back() -> None:
    tx = TransactionBuilder("t")
    tx.create(Native, {})
    built = tx.build()
    assert Transaction.from_json(built.to_json()) == built


def test_conversion_is_idempotent_over_every_matrix_case() -> None:
    from type_cases import CASES, Sample

    registry = ModelRegistry([Sample])
    tx = TransactionBuilder("t")
    for i, case in enumerate(c for c in CASES if not c.refused):
        tx.create("Sample", {"id": uuid.UUID(int=i), case.field: case.given})
    once = registry.convert(tx.build())
    again = registry.convert(Transaction.from_json(once.to_json()))
    assert [s.data for s in again.steps] == [s.data for s in once.steps]
