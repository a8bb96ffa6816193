"""A buffered status made without validation equals the validated one, field by field."""

from __future__ import annotations

import datetime as dt

from ccat_buffering.buffer._transitions import buffered_status
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


def test_the_unvalidated_status_has_every_field_the_validated_one_has() -> None:
    tx, _ = observation(1)
    at = dt.datetime(2026, 12, 7, 3, 15, tzinfo=dt.UTC)
    made = buffered_status(tx, updated_at=at)
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
