"""Statuses written and read by hand (the drain's lean path) read as pydantic reads them."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import given
from hypothesis import strategies as st

from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.status import StatusEvent, TransactionState, TransactionStatus
from ccat_buffering_redis._values import _lean_status_json, status_json, status_of

DROP = {"transaction_id", "created_at", "updated_at", "committed_at", "replicated_at"}
times = st.datetimes(
    min_value=dt.datetime(1900, 1, 1),
    max_value=dt.datetime(2300, 1, 1),
    timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-4))]),
)
texts = st.text(max_size=40)  # any text: quotes, backslashes, control and non-ASCII characters
events = st.builds(
    StatusEvent,
    at=times,
    event=st.sampled_from(["buffered", "retrying", "committed", "outage pause", "replicated"]),
    note=st.none() | texts,
    times=st.integers(1, 10_000),
)
statuses = st.builds(
    TransactionStatus,
    transaction_id=st.uuids().map(str),
    endpoint=st.sampled_from(["", "record_scan", 'é " \\ \n']),
    state=st.sampled_from(TransactionState),
    attempts=st.integers(0, 50),
    last_error=st.none() | texts,
    commit_lsn=st.none() | st.integers(0, 2**64 - 1).map(LSN),
    created_at=times,
    updated_at=times,
    committed_at=st.none() | times,
    replicated_at=st.none() | times,
    history=st.lists(events, max_size=4).map(tuple),
    generated=st.just({}) | st.just({"s1": {"id": 7, "at": "2026-01-01T00:00:00Z"}}),
)


@given(statuses)
def test_a_status_reads_back_as_it_was_written(status: TransactionStatus) -> None:
    back = status_of(status.transaction_id, status_json(status))
    assert back == status
    assert back is not None and type(back.commit_lsn) is type(status.commit_lsn)
    assert back.created_at.tzinfo is dt.UTC and all(e.at.tzinfo is dt.UTC for e in back.history)
    # With the records it wrote after it, and a sequence number ahead (a bucketed state).
    assert status_of(status.transaction_id, "12" + status_json(status) + "\nObs:1") == status


@given(statuses)
def test_the_lean_json_is_what_pydantic_writes(status: TransactionStatus) -> None:
    lean = _lean_status_json(status.__dict__)
    full = status.model_dump_json(exclude=DROP, exclude_defaults=True)
    if lean is None:
        assert status.generated  # only generated values go the slow way
    else:
        assert json.loads(lean) == json.loads(full)


def test_an_unusual_status_text_is_read_by_the_full_validation() -> None:
    tail = "@1796646611985609,0"
    status = status_of("t", '{"state":"committed","commit_lsn":"0/1","future":1}' + tail)
    assert status is not None and status.commit_lsn == LSN("0/1")
    assert status_of("t", '{"state":"processing","attempts":"2"}' + tail) == status_of(
        "t", '{"state":"processing","attempts":2}' + tail
    )


def test_remembered_bodies_and_times_never_mix_statuses() -> None:
    # Bodies and times are remembered, bounded: past the bound, each still reads back as written.
    now = dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC)
    for i in range(600):
        at = now + dt.timedelta(microseconds=i % 80)
        status = TransactionStatus(
            transaction_id=f"t{i}",
            endpoint="record_scan",
            state=TransactionState.COMMITTED,
            attempts=i % 3,
            commit_lsn=LSN(i),
            created_at=now,
            updated_at=at,
            committed_at=at,
        )
        text = status_json(status)
        assert text.startswith(status.model_dump_json(exclude=DROP, exclude_defaults=True) + "@")
        assert status_of(status.transaction_id, text) == status
