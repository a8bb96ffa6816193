"""The drain's lean decode of a claimed entry reads exactly what the full validation reads."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from ccat_buffering.buffer._entry_decoding import decode_entry
from ccat_buffering.write.builder import TransactionBuilder
from ccat_buffering.write.models import Transaction

TX_ID = "0b7c6a4e-5d1f-4f0e-9a57-2f1c3b8d9e10"
WHEN = "2026-12-01T10:00:00+00:00"


def _built() -> list[Transaction]:
    plain = TransactionBuilder("record")
    plain.create(
        "Obs",
        {
            "id": uuid.UUID(int=1),
            "at": dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
            "pwv": Decimal("1.5"),
        },
    )
    plain.bulk_update("Obs", [{"id": "a", "n": 1}, {"id": "b", "n": None}])
    based = TransactionBuilder("finish")
    based.update("Obs", "a", {"status": "done"}, expected={"status": "running"})
    based.delete("Obs", "b", expected_version=3)
    based.bulk_update("Obs", [{"id": "c", "n": 2}, {"id": "d", "n": 3}], expected=[{"n": 1}, {}])
    referring = TransactionBuilder("refs")
    first = referring.create("Obs", {"name": "x"})
    referring.create("File", {"obs_id": first.ref("id"), "meta": {"$odd": [1, {"k": b"\x00"}]}})
    return [plain.build(), based.build(), referring.build()]


@pytest.mark.parametrize("tx", _built(), ids=["creates and bulk update", "bases", "refs"])
def test_a_submitted_transaction_reads_back_as_the_full_validation_reads_it(
    tx: Transaction,
) -> None:
    text = tx.to_json()
    lean, full = decode_entry(text), Transaction.from_json(text)
    assert lean == full
    assert lean.model_fields_set == full.model_fields_set
    assert [s.model_fields_set for s in lean.steps] == [s.model_fields_set for s in full.steps]
    assert [s.refs() for s in lean.steps] == [s.refs() for s in full.steps]
    assert lean.to_json() == text


def test_a_plain_entry_is_not_validated_again(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _built()[0].to_json()

    def validated(cls: Any, text: str) -> Transaction:
        raise AssertionError("validated again")

    monkeypatch.setattr(Transaction, "from_json", classmethod(validated))
    assert decode_entry(text).to_json() == text


def _wire(steps: list[dict[str, Any]] | None = None, **fields: Any) -> str:
    step = {"step_id": "s0", "operation": "create", "model": "M", "data": {"a": 1}}
    body: dict[str, Any] = {
        "format_version": 1,  # as to_json writes it
        "transaction_id": TX_ID,
        "endpoint": "ep",
        "steps": [step] if steps is None else steps,
        "created_at": WHEN,
        **fields,
    }
    return json.dumps({k: v for k, v in body.items() if v is not ...})


def _step(**fields: Any) -> dict[str, Any]:
    step = {"step_id": "s0", "operation": "create", "model": "M", "data": {"a": 1}, **fields}
    return {k: v for k, v in step.items() if v is not ...}


UNUSUAL = {
    "upper-case id": _wire(transaction_id=TX_ID.upper()),
    "no created_at": _wire(created_at=...),
    "no format version": _wire(format_version=...),
    "a trace context": _wire(trace_context={"traceparent": "00-x"}),
    "a null trace context": _wire(trace_context=None),
    "a bad trace context": _wire(trace_context={"traceparent": 1}),
    "naive created_at": _wire(created_at="2026-12-01T10:00:00"),
    "other zone": _wire(created_at="2026-12-01T12:00:00+02:00"),
    "future format": _wire(format_version=99),
    "unknown key": _wire(colour="blue"),
    "no steps": _wire(steps=[]),
    "step id twice": _wire(steps=[_step(), _step()]),
    "unknown operation": _wire(steps=[_step(operation="upsert")]),
    "create without data": _wire(steps=[_step(data=...)]),
    "create with a key": _wire(steps=[_step(key={"id": 1})]),
    "bad field name": _wire(steps=[_step(data={"a b": 1})]),
    "bad model name": _wire(steps=[_step(model="M; drop")]),
    "empty key": _wire(steps=[_step(operation="delete", data=..., key={})]),
    "base on a create": _wire(steps=[_step(expected={"a": 0})]),
    "bulk update without its key": _wire(
        steps=[_step(operation="bulk_update", data=..., records=[{"n": 1}])]
    ),
    "version as text": _wire(
        steps=[_step(operation="delete", data=..., key={"id": 1}, expected_version="3")]
    ),
    "NaN": _wire().replace('"a": 1', '"a": NaN'),
    "Infinity": _wire().replace('"a": 1', '"a": -Infinity'),
    "lone surrogate": _wire().replace('"a": 1', '"a": "\\ud800"'),
    "a field twice": _wire().replace('"a": 1', '"a": 1, "a": 2'),
    "bad tagged value": _wire(steps=[_step(data={"a": {"$decimal": "x"}})]),
    "not an object": "[1, 2]",
    "truncated": '{"truncated": ',
}


def _read(decode: Any, text: str) -> tuple[str, ...]:
    try:
        tx = decode(text)
    except Exception as exc:  # the full validation raises what it raises: the same here
        return ("error", type(exc).__name__, str(exc))
    # created_at is "now" when the entry has none; NaN is not equal to itself
    fields = tx.model_fields_set
    return ("read", tx.model_dump_json(exclude={"created_at"}), str(sorted(fields)))


@pytest.mark.parametrize("text", UNUSUAL.values(), ids=UNUSUAL.keys())
def test_an_unusual_entry_gets_the_full_validations_answer(text: str) -> None:
    assert _read(decode_entry, text) == _read(Transaction.from_json, text)


def test_a_copy_of_a_decoded_entry_leaves_its_fields_set_as_the_full_validations() -> None:
    """Two entries of the same fields, one copied with changes: both keep the full reading's."""
    first, second = (_built()[0].to_json() for _ in range(2))
    a, b = decode_entry(first), decode_entry(second)
    full = Transaction.from_json(second)
    a.model_copy(update={"endpoint": "other"})
    a.steps[0].model_copy(update={"key_fields": ("other",)})
    for tx in (a, b):
        assert tx.model_fields_set == full.model_fields_set
        assert [s.model_fields_set for s in tx.steps] == [s.model_fields_set for s in full.steps]
    changed = b.model_copy(update={"trace_context": {"k": "v"}})
    assert "trace_context" in changed.model_fields_set
    assert "trace_context" not in b.model_fields_set
    with pytest.raises(Exception, match="frozen"):
        b.endpoint = "x"  # type: ignore[misc]
    assert b.model_fields_set == full.model_fields_set


def test_a_step_shaped_like_one_read_before_gets_the_full_validations_answer() -> None:
    """Steps are read by (step id, operation, model, field count): the rest is still checked."""
    known = _wire(steps=[_step(key_fields=["id"])])
    assert _read(decode_entry, known) == _read(Transaction.from_json, known)
    same_count = {
        "other key fields": _wire(steps=[_step(key_fields=["a"])]),
        "a key for its data": _wire(steps=[_step(data=..., key={"a": 1}, key_fields=["id"])]),
        "null data": _wire(steps=[_step(data=None, key_fields=["id"])]),
        "bad field name": _wire(steps=[_step(data={"a b": 1}, key_fields=["id"])]),
        "tagged value": _wire(steps=[_step(data={"a": {"$uuid": TX_ID}}, key_fields=["id"])]),
        "key fields as text": _wire(steps=[_step(key_fields="id")]),
    }
    for name, text in same_count.items():
        assert _read(decode_entry, text) == _read(Transaction.from_json, text), name
    twice = decode_entry(known), decode_entry(known)
    assert twice[0] == twice[1] == Transaction.from_json(known)
    assert twice[0].steps[0].data is not twice[1].steps[0].data
