"""An observatory service on a buffering site: observations and their raw files.

Run it with ``uvicorn observatory_service:app`` beside a ``ccat-buffering
worker --models observatory_service:Base`` (the worker drains, the service
submits and reads); the site is configured by ``CCAT_BUFFERING_*`` variables
(see the configuration page).
"""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import DateTime, ForeignKey, Integer, String, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccat_buffering import ModelRegistry, TransactionBuilder
from ccat_buffering.web.fastapi import (
    Site,
    critical_operation,
    health_router,
    install_error_handlers,
    lifespan,
)
from ccat_buffering.web.fastapi_waits import waits_router
from ccat_buffering.web.service_metrics import metrics_router

# -- the schema ----------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Observation(Base):
    __tablename__ = "observation"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    target: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="running")
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class RawFile(Base):
    __tablename__ = "raw_file"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    observation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("observation.id"), index=True)
    path: Mapped[str] = mapped_column(String(256))
    size_bytes: Mapped[int] = mapped_column(Integer)


# -- what clients send and receive -----------------------------------------------


class NewObservation(BaseModel):
    target: str


class NewFile(BaseModel):
    path: str
    size_bytes: int


class ObservationOut(BaseModel):
    id: uuid.UUID
    target: str
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime | None


class RawFileOut(BaseModel):
    id: uuid.UUID
    observation_id: uuid.UUID
    path: str
    size_bytes: int


# -- the wiring ------------------------------------------------------------------

app = FastAPI(lifespan=lifespan(registry=ModelRegistry.from_base(Base)))
install_error_handlers(app)
app.include_router(health_router())  # health; a status, or ?wait=replicated (long poll)
app.include_router(waits_router())  # .../transactions/{id}/events: the changes, as SSE
app.include_router(metrics_router())  # GET /metrics: this service's submits, reads, waits


# -- the service -----------------------------------------------------------------


@app.post("/observations", status_code=201)
@critical_operation
async def start_observation(body: NewObservation, tx: TransactionBuilder) -> dict[str, str]:
    now = dt.datetime.now(dt.UTC)
    observation = tx.create(Observation, {"target": body.target, "started_at": now})
    return {"id": str(observation.id)}


@app.post("/observations/{observation_id}/files", status_code=201)
@critical_operation
async def register_files(
    observation_id: uuid.UUID, files: list[NewFile], tx: TransactionBuilder
) -> dict[str, list[str]]:
    rows = [{"observation_id": observation_id, **f.model_dump()} for f in files]
    return {"ids": [str(handle.id) for handle in tx.bulk_create(RawFile, rows)]}


@app.post("/observations/{observation_id}/finish")
@critical_operation
async def finish_observation(observation_id: uuid.UUID, tx: TransactionBuilder) -> dict[str, str]:
    now = dt.datetime.now(dt.UTC)
    tx.update(Observation, str(observation_id), {"status": "finished", "finished_at": now})
    return {"id": str(observation_id), "status": "finished"}


@app.get("/observations/{observation_id}")
async def get_observation(observation_id: uuid.UUID, site: Site) -> ObservationOut:
    record = await site.reads.get("Observation", str(observation_id))
    if record is None:
        raise HTTPException(404, f"no observation {observation_id}")
    return ObservationOut.model_validate(record)


@app.get("/observations/{observation_id}/files")
async def list_files(observation_id: uuid.UUID, site: Site) -> list[RawFileOut]:
    files = await site.reads.list("RawFile", observation_id=observation_id)
    return [RawFileOut.model_validate(f) for f in files]
