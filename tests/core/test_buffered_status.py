"""A buffered status made without validation equals the validated one, field by field."""

from __future__ import annotations

import datetime as dt

import pytest

from ccat_buffering.buffer._transitions import buffered_at, buffered_status
from ccat_buffering.write.models import Transaction, TransactionState, TransactionStatus

from support import observation


def _validated(tx: Transaction, updated_at: dt.datetime) -> TransactionStatus:
    return TransactionStatus(
        transaction_id=tx.transaction_id,
        endpoint=tx.endpoint,
        state=TransactionState.BUFFERED,
        created_at=tx.created_at,
        updated_at=updated_at,
    )


@pytest.mark.parametrize(
    ("make", "zone"),
    [
        (lambda tx, at: buffered_status(tx, updated_at=at), dt.UTC),
        (buffered_at, dt.UTC),  # buffer()'s own: the fields written out
        (buffered_at, dt.timezone(dt.timedelta(hours=-4))),  # not UTC: buffered_status's way
    ],
    ids=["buffered_status", "buffered_at", "buffered_at-other-zone"],
)
def test_the_unvalidated_status_has_every_field_the_validated_one_has(make, zone) -> None:
    tx, _ = observation(1)
    at = dt.datetime(2026, 12, 7, 3, 15, tzinfo=zone)
    made = make(tx, at)
    expected = _validated(tx, updated_at=at)
    # Same fields in the declared order (a field added to the model and not
    # here fails), same values, same fields set.
    assert list(made.__dict__) == list(TransactionStatus.model_fields)
    assert made.__dict__ == expected.__dict__
    assert made.model_fields_set == expected.model_fields_set
    assert made.model_dump_json() == expected.model_dump_json()


def test_without_a_time_it_is_stamped_now() -> None:
    tx, _ = observation(2)
    before = dt.datetime.now(dt.UTC)
    made = buffered_status(tx)
    assert made.updated_at is not None and made.updated_at >= before
    assert made == _validated(tx, updated_at=made.updated_at)


def test_advancing_a_batch_equals_advancing_each() -> None:
    """The drain's batch copy (_advance_all) makes what _advance makes of each status."""
    from ccat_buffering.buffer._transitions import Transitions
    from ccat_buffering.write.lsn import LSN
    from ccat_buffering.write.status import made_event

    class _Moves(Transitions):
        def now(self) -> dt.datetime:
            raise AssertionError("the time is given")

    moves = _Moves()
    at = dt.datetime(2026, 12, 7, 3, 15, 0, 250, tzinfo=dt.UTC)
    routine = buffered_status(observation(1)[0], updated_at=at)
    storied = routine.model_copy(
        update={"attempts": 1, "history": (made_event(at, "retrying", "boom"),)}
    )
    cases = [
        (TransactionState.PROCESSING, {}, None),
        (
            TransactionState.COMMITTED,
            {"commit_lsn": LSN(0x1_0000_0010), "committed_at": at, "last_error": None},
            "LSN 1/10",
        ),
        (TransactionState.REPLICATED, {"replicated_at": at}, None),
        # Not a move the drain batches, but one _advance_all must not get wrong.
        (TransactionState.RETRYING, {"attempts": 2, "last_error": "boom"}, None),
    ]
    later = at + dt.timedelta(seconds=2)
    for state, changes, note in cases:
        batch = moves._advance_all([routine, storied], state, later, note=note, **changes)
        each = [
            moves._advance(s, state, note=note, now=later, **changes) for s in (routine, storied)
        ]
        for made, expected in zip(batch, each, strict=True):
            assert list(made.__dict__) == list(TransactionStatus.model_fields)
            assert made.__dict__ == expected.__dict__
            assert made.model_fields_set == expected.model_fields_set
        assert batch[1].history[-1].event == state.value or state is TransactionState.PROCESSING
        assert bool(batch[0].history) is (state is TransactionState.RETRYING)
