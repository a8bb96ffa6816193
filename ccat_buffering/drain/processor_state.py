"""What a processor is doing, and the report it publishes of itself."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from ccat_buffering.buffer.counts import BufferCounts

__all__ = ["Counters", "ProcessorHealth", "ProcessorState"]


class ProcessorState(enum.StrEnum):
    """What a processor is doing."""

    STOPPED = "stopped"
    STANDBY = "standby"
    RUNNING = "running"
    PAUSED = "paused"


class ProcessorHealth(BufferCounts):
    """A processor's own view of itself and its site's buffer (counts: see BufferCounts).

    Attributes:
        state: Running, standing by, paused by an outage, or stopped.
        cause: Why it is paused.
        holder: This processor's lease token.
        lease_holder: Who holds the site's lease now.
        last_run_at: When it last claimed from the buffer.
        processed: Transactions committed (or found applied) by this processor.
        retried: Failed attempts sent back to retry (data errors).
        conflicts: Serialization failures and deadlocks, retried at once.
        conflicted: Transactions taken out of the queue as ``conflicted``
            (a write conflict rejected, or a wait behind one).
        dead_lettered: Transactions it dead-lettered.
        outages: Batches returned to the queue because the database was down.
    """

    state: ProcessorState
    cause: str | None = None
    holder: str
    lease_holder: str | None = None
    last_run_at: dt.datetime | None = None
    processed: int = 0
    retried: int = 0
    conflicts: int = 0
    conflicted: int = 0
    dead_lettered: int = 0
    outages: int = 0


@dataclass
class Counters:
    """What one processor has done since it started."""

    processed: int = 0
    retried: int = 0
    conflicts: int = 0
    conflicted: int = 0
    dead_lettered: int = 0
    outages: int = 0
