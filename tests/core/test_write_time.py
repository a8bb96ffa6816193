"""Which server defaults take the write time on a buffered create, and the opt-out."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Column, Date, DateTime, Integer, String, func, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.columns import WRITE_TIME_INFO, takes_write_time


@pytest.mark.parametrize(
    "column",
    [
        Column("a", DateTime(timezone=True), server_default=func.now()),
        Column("b", DateTime(timezone=True), server_default=func.current_timestamp()),
        Column("c", DateTime(), server_default=text("CURRENT_TIMESTAMP")),
        Column("d", DateTime(), server_default=text("now ( )")),
        Column("e", DateTime(), server_default=func.transaction_timestamp()),
        Column("f", Date(), server_default=func.now()),
    ],
)
def test_current_time_server_defaults_take_the_write_time(column: Column[object]) -> None:
    assert takes_write_time(column)


@pytest.mark.parametrize(
    "column",
    [
        Column(
            "a", DateTime(timezone=True), server_default=func.now(), info={WRITE_TIME_INFO: False}
        ),
        Column("b", DateTime(timezone=True)),
        Column("c", String(8), server_default="new"),
        Column("d", DateTime(timezone=True), server_default=text("'2026-01-01'")),
        Column("e", Integer, server_default=text("42")),
        Column("f", String(40), server_default=func.now()),  # not a time column
    ],
)
def test_other_columns_keep_the_databases_default(column: Column[object]) -> None:
    assert not takes_write_time(column)


class _Base(DeclarativeBase):
    pass


class Stamp(_Base):
    __tablename__ = "stamp"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    received: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), info={WRITE_TIME_INFO: False}
    )


def test_a_create_gets_the_write_time_unless_it_gives_one_or_opts_out() -> None:
    before = dt.datetime.now(dt.UTC)
    tx = TransactionBuilder("stamp")
    tx.create(Stamp, {})
    given = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    tx.create(Stamp, {"at": given})
    tx.update(Stamp, 1, {"received": given})
    first, second, update = tx.build().steps
    assert first.data is not None and before <= first.data["at"] <= dt.datetime.now(dt.UTC)
    assert "received" not in first.data
    assert second.data == {"at": given}
    assert update.data == {"received": given}  # updates are not stamped
