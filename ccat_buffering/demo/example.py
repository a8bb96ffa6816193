"""Two small operations schemas for ``simulate``, the tests and the documentation.

``Base``: three tables as an observatory records a night, keyed by text and an
autoincrement integer: an executed observation unit, the raw data packages it
produced, and the raw data files in each package, linked by foreign keys so
that order matters.

``ObservatoryBase``: the shape most new schemas have: native ``Uuid`` primary
and foreign keys made by the column's own ``default=``, an enum, a date, and a
``created_at`` stamped by a Python-side default.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal

from sqlalchemy import BigInteger, Date, DateTime, Enum, ForeignKey, Integer, Numeric, String, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "DataFile",
    "ExecutedObsUnit",
    "Observation",
    "ObservationStatus",
    "ObservatoryBase",
    "RawDataFile",
    "RawDataPackage",
]


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


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ObservationStatus(enum.StrEnum):
    """Where an observation stands."""

    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


class ObservatoryBase(DeclarativeBase):
    """Declarative base of the UUID-keyed example schema."""


class Observation(ObservatoryBase):
    """One observation of a target in a night."""

    __tablename__ = "observation"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    target: Mapped[str] = mapped_column(String(64))
    status: Mapped[ObservationStatus] = mapped_column(Enum(ObservationStatus))
    night: Mapped[dt.date] = mapped_column(Date)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_utc_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class DataFile(ObservatoryBase):
    """One file an observation wrote."""

    __tablename__ = "data_file"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    observation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("observation.id"))
    path: Mapped[str] = mapped_column(String(256))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
