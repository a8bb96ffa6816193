"""The payload's JSON made without pydantic's callbacks is pydantic's own text, byte for byte."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccat_buffering.buffer import checks
from ccat_buffering.errors import TransactionValidationError
from ccat_buffering.write._transaction_json import plain_json
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Ref, Step, Transaction


def pydantic_text(transaction: Transaction) -> str:
    return transaction.model_dump_json(exclude_none=True)


def same_text(transaction: Transaction) -> str:
    """The fast text, asserted made (not left to pydantic) and equal to pydantic's."""
    text = plain_json(transaction)
    assert text is not None
    assert text == pydantic_text(transaction)
    assert transaction.to_json() == text
    return text


ODD_TEXT = ["é ü 中文 🎉", 'quote" back\\ slash/', "ctl\x00\x01\x1f\x7f\u2028\n\t\r\b\f", ""]
ODD_FLOATS = [0.1, 1e16, 3e-07, 5e-324, 1.7976931348623157e308, -0.0, 1 / 3, 1e22, 100.0]


def test_the_bench_shape() -> None:
    tx = TransactionBuilder("start_observation")
    obs = tx.create(
        "ExecutedObsUnit",
        {"obs_unit_id": 7, "start_time": dt.datetime.now(dt.UTC), "mean_pwv": Decimal("1.235")},
    )
    tx.create("RawDataPackage", {"executed_obs_unit_id": obs.id, "name": "pkg"})
    same_text(tx.build())


@pytest.mark.parametrize("value", [*ODD_TEXT, *ODD_FLOATS, None, True, 2**70, -1])
def test_values_of_every_plain_kind(value: Any) -> None:
    tx = TransactionBuilder("e")
    tx.create("Thing", {"v": value, "nested": {"a": [value, {"b": value}]}, "list": [value]})
    same_text(tx.build())


def test_encoded_types_refs_bases_and_bulk_steps() -> None:
    tx = TransactionBuilder("e", transaction_id=str(uuid.uuid4()))
    thing = tx.create(
        "Thing",
        {
            "when": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            "day": dt.date(2026, 1, 2),
            "at": dt.time(1, 2, 3),
            "span": dt.timedelta(seconds=90),
            "u": uuid.uuid4(),
            "amount": Decimal("1.50"),
            "blob": b"\x00\xff",
            "doc": {"$odd": 1, "x": [1.5, None]},
            "nan": float("nan"),
        },
    )
    tx.create("Child", {"thing_id": Ref(step="s0", field="id"), "id": thing.id})
    tx.update("Thing", "k", {"x": 1e-7}, expected={"x": 1}, expected_version=3)
    tx.delete("Thing", {"a": 1, "b": "two"}, expected={"z": None})
    tx.bulk_create("Many", [{"id": str(i), "v": i / 7} for i in range(3)])
    tx.bulk_update(
        "Many",
        [{"id": "1", "v": 2}, {"id": "2", "v": None}],
        expected=[{"v": 1}, {}],
        expected_version=[None, 4],
    )
    text = same_text(tx.build())
    assert '"format_version":2' in text


def test_copies_trace_context_and_an_explicit_format() -> None:
    tx = TransactionBuilder("e")
    tx.create("Thing", {"v": 1})
    built = tx.build()
    same_text(built.model_copy(update={"trace_context": {"traceparent": "00-ab-cd-01"}}))
    same_text(built.model_copy(update={"format_version": 2}))
    same_text(built.model_copy(update={"created_at": dt.datetime(999, 1, 1, tzinfo=dt.UTC)}))


def test_a_shape_it_does_not_know_is_left_to_pydantic() -> None:
    tx = TransactionBuilder("e")
    tx.create("Thing", {"v": 1})
    built = tx.build()
    odd_step = Step.model_construct(**{**built.steps[0].__dict__, "step_id": _Text("s0")})
    odd = built.model_copy(update={"steps": [odd_step]})
    assert plain_json(odd) is None
    assert odd.to_json() == pydantic_text(odd)


class _Text(str):
    pass


def test_a_lone_surrogate_is_refused_with_the_same_message() -> None:
    good = TransactionBuilder("e")
    good.create("Thing", {"v": "x"})
    built = good.build()
    bad_step = built.steps[0].model_copy(update={"data": {"v": "\ud800", "id": "k"}})
    bad = built.model_copy(update={"steps": [bad_step]})
    assert plain_json(bad) is None
    with pytest.raises(TransactionValidationError, match=r"s0\.v holds a lone surrogate"):
        bad.to_json()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), _json_values))
def test_any_json_data_gives_pydantics_text(data: dict[str, Any]) -> None:
    tx = TransactionBuilder("e")
    tx.create("Thing", data)
    try:
        built = tx.build()
    except TransactionValidationError:
        return  # text that UTF-8 cannot encode: refused at build, as before
    text = plain_json(built)
    assert text is None or text == pydantic_text(built)
    assert built.to_json() == pydantic_text(built)


def test_a_transaction_id_check_is_not_skipped_for_other_text() -> None:
    # check_transaction_id remembers the id it passed last: an empty or bad id
    # is refused all the same, whatever came before it.
    checks.check_transaction_id("tx-1")
    for bad in ["", "a,b", "x\x1fy"]:
        with pytest.raises(TransactionValidationError):
            checks.check_transaction_id(bad)
    assert checks.check_transaction_id("tx-1") == "tx-1"


def test_the_text_is_made_once_and_follows_every_change_of_a_field() -> None:
    tx = TransactionBuilder("e")
    tx.create("Thing", {"v": 1})
    built = tx.build()  # build() checks the size with the text: made once, here
    assert "_json" in built.__dict__
    first = built.to_json()
    assert built.to_json() is first
    assert first == pydantic_text(built)
    # A copy with another value of any field (or a step replaced in place) writes its own.
    traced = built.model_copy(update={"trace_context": {"traceparent": "00-ab-cd-01"}})
    assert traced.to_json() == pydantic_text(traced) != first
    renamed = built.model_copy(update={"endpoint": "other"})
    assert renamed.to_json() == pydantic_text(renamed) != first
    other = TransactionBuilder("e")
    other.create("Thing", {"v": 2})
    built.steps[0] = other.build().steps[0]
    assert built.to_json() == pydantic_text(built) != first
    # The memo is no field: equality, iteration and dumps do not see it.
    assert built == built.model_copy()
    assert "_json" not in dict(built)
    assert "_json" not in built.model_dump()
