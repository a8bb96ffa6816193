"""A small operations schema for ``simulate``, the tests and the documentation.

Three tables, as an observatory records a night: an executed observation unit,
the raw data packages it produced, and the raw data files in each package,
linked by foreign keys so that order matters.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import DateTime, ForeignKey, Integer, Numeric, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "ExecutedObsUnit", "RawDataFile", "RawDataPackage"]


class Base(DeclarativeBase):
    """Declarative base of the example schema."""


class ExecutedObsUnit(Base):
    """One execution of an observation unit."""

    __tablename__ = "executed_obs_unit"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    obs_unit_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))
    start_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    end_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    mean_pwv: Mapped[Decimal | None] = mapped_column(Numeric(6, 3), nullable=True)


class RawDataPackage(Base):
    """The raw data of one execution, as it is shipped."""

    __tablename__ = "raw_data_package"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    executed_obs_unit_id: Mapped[str] = mapped_column(ForeignKey("executed_obs_unit.id"))
    name: Mapped[str] = mapped_column(String(128), unique=True)


class RawDataFile(Base):
    """One file of a raw data package."""

    __tablename__ = "raw_data_file"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    raw_data_package_id: Mapped[str] = mapped_column(ForeignKey("raw_data_package.id"))
    path: Mapped[str] = mapped_column(String(256), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
