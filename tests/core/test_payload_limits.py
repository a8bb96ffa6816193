"""Nothing is acked that the drain cannot read: submit and drain apply one check.

Hypothesis builds transactions of every shape the builder takes (JSON values
nested up to 300 deep, integers up to 4,400 digits, any text, lone surrogates
included, floats that JSON cannot hold) and buffers them through the
manager; whatever the submit path accepts is then claimed through the
drain's own reader and must come back whole, with nothing dead-lettered.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccat_buffering import TransactionBuilder
from ccat_buffering.buffer._entries import read_claims
from ccat_buffering.buffer.manager import TransactionManager
from ccat_buffering.buffer.protocols import Claim
from ccat_buffering.errors import PayloadTooLargeError, TransactionValidationError
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.models import Transaction
from ccat_buffering.write.payload_limits import MAX_DEPTH, MAX_INT_DIGITS, payload_problem
from ccat_buffering.write.registry import ModelRegistry
from ccat_buffering_memory import MemoryBackend


class Base(DeclarativeBase):
    pass


class Doc(Base):
    __tablename__ = "doc"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    body: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    name: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    count: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(40, 10), nullable=True)


REGISTRY = ModelRegistry.from_base(Base)

if hasattr(sys, "set_int_max_str_digits"):
    # The test's own huge integers must print (hypothesis shows failing examples).
    sys.set_int_max_str_digits(0)

any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)
huge_ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**4400), max_value=10**4400),
    st.sampled_from([10**4299, -(10**4299), 10**4300 - 1, 10**4300, -(10**4300), 2**63, -(2**63)]),
)
leaves = st.one_of(
    st.none(), st.booleans(), huge_ints, st.floats(allow_nan=True, allow_infinity=True), any_text
)
json_values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """A value nested ``depth`` levels deep, lists and objects mixed, around the limit."""
    depth = draw(st.integers(min_value=MAX_DEPTH - 10, max_value=300))
    value = draw(leaves)
    for _ in range(depth):
        value = [value] if draw(st.booleans()) else {draw(any_text): value}
    return value


records = st.fixed_dictionaries(
    {},
    optional={
        "body": json_values | deep(),
        "name": any_text,
        "count": huge_ints,
        "amount": st.decimals(allow_nan=False, allow_infinity=False, places=4),
    },
)


def _submitted(manager: TransactionManager, data: list[dict[str, Any]]) -> Transaction | None:
    """Build and buffer; ``None`` when the submit path refused it (with the library's error)."""
    builder = TransactionBuilder("hypothesis", max_payload_bytes=manager.max_payload_bytes)
    try:
        for record in data:
            builder.create(Doc, {"id": str(uuid.uuid4()), **record})
        transaction = builder.build()
        asyncio.run(manager.buffer(transaction))
    except TransactionValidationError:
        return None
    return transaction


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.lists(records, min_size=1, max_size=3), limit=st.sampled_from([None, 4096, 2**20]))
def test_the_drain_reads_everything_that_submit_accepts(
    data: list[dict[str, Any]], limit: int | None
) -> None:
    backend = MemoryBackend(new_site_name())
    manager = TransactionManager(backend, registry=REGISTRY, max_payload_bytes=limit)
    transaction = _submitted(manager, data)
    if transaction is None:
        assert asyncio.run(backend.buffer.stats()).depth == 0  # refused: nothing written
        return
    deliveries = asyncio.run(manager.claim(10, 60))
    assert asyncio.run(backend.dead_letters.list()) == []
    assert [d.transaction for d in deliveries] == [transaction]  # whole, as submitted


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [MAX_DEPTH - 3, MAX_DEPTH + 1, 196, 200, 253, 1000, 100_000])
def test_a_deep_value_is_refused_at_submit_with_a_clear_error(depth: int) -> None:
    builder = TransactionBuilder("deep")
    if depth <= MAX_DEPTH - 4:
        builder.create(Doc, {"id": "d", "body": _nested(depth)})
        text = builder.build().to_json()
        assert Transaction.from_json(text).steps[0].data is not None
        return
    with pytest.raises(TransactionValidationError, match=f"deeper than {MAX_DEPTH} levels|nested"):
        builder.create(Doc, {"id": "d", "body": _nested(depth)})
        builder.build().to_json()


def test_a_transaction_made_without_the_builder_is_checked_at_to_json_too() -> None:
    step = {"step_id": "s0", "operation": "create", "model": "Doc"}
    steps = [{**step, "data": {"id": "x", "body": _nested(190)}}]
    transaction = Transaction.validate_python({"endpoint": "raw", "steps": steps})
    with pytest.raises(TransactionValidationError, match=r"nested 19\d levels deep"):
        transaction.to_json()
    wide = [{**step, "data": {"id": "x", "n": 10**MAX_INT_DIGITS}}]
    with pytest.raises(TransactionValidationError, match="integer of 4301 digits"):
        Transaction.validate_python({"endpoint": "raw", "steps": wide}).to_json()


def test_the_drain_refuses_what_an_older_release_acked_with_the_same_reason() -> None:
    text = '{"format_version":1,"transaction_id":"t1","endpoint":"e","steps":' + "[" * 300
    text += "]" * 300 + "}"
    kind, what = payload_problem(text, None) or (None, "")
    assert kind is TransactionValidationError and "over the limit of 128" in what
    parsed, refused = read_claims([Claim("r1", text, 0.0)], None)
    assert parsed == [] and "nested 301 levels deep" in refused[0].reason
    assert payload_problem('{"a": "' + "[" * 500 + '"}', None) is None  # brackets in text
    too_big = payload_problem("x" * 5000, 4000)
    assert too_big is not None and too_big[0] is PayloadTooLargeError


def _entry(data: Any) -> str:
    """A transaction's JSON as an older release could have written it (no check at submit)."""
    step = {"step_id": "s0", "operation": "create", "model": "Doc", "data": data}
    step["key_fields"] = ["id"]
    tx = {
        "format_version": 1,
        "transaction_id": str(uuid.uuid4()),
        "endpoint": "old",
        "steps": [step],
        "created_at": "2026-12-01T10:00:00Z",
    }
    return json.dumps(tx, separators=(",", ":"))


def test_a_short_entry_with_a_value_nested_past_the_limit_is_refused_at_the_drain() -> None:
    """The drain skips the bracket count only for an entry whose values do not nest."""
    plain = _entry({"id": "a", "body": 1})
    deep = _entry({"id": "b", "body": _nested(MAX_DEPTH + 10)})  # the parser reads 200
    assert len(deep) < MAX_INT_DIGITS  # short: the case that skips the count when it can
    parsed, refused = read_claims([Claim("r1", plain, 0.0), Claim("r2", deep, 0.0)], None)
    assert [tx.steps[0].data for _, tx in parsed] == [{"id": "a", "body": 1}]
    assert [r.claim.receipt for r in refused] == ["r2"]
    assert "nested 142 levels deep" in refused[0].reason
    shallow = _entry({"id": "c", "body": _nested(3), "at": {"$datetime": "2026-01-01T00:00:00Z"}})
    parsed, refused = read_claims([Claim("r3", shallow, 0.0)], None)
    assert refused == [] and parsed[0][1] == Transaction.from_json(shallow)


def test_a_short_entry_over_the_size_limit_is_refused_at_the_drain() -> None:
    text = _entry({"id": "a", "body": "x" * 300})
    limit = len(text) - 1
    parsed, refused = read_claims([Claim("r1", text, 0.0)], limit)
    assert parsed == [] and "max_payload_bytes" in refused[0].reason
    parsed, refused = read_claims([Claim("r1", text, 0.0)], len(text))
    assert refused == [] and len(parsed) == 1
    wide = text.replace('"x', '"\u00e9')  # a character of two bytes: the size, not the length
    parsed, refused = read_claims([Claim("r1", wide, 0.0)], len(text))
    assert parsed == [] and "max_payload_bytes" in refused[0].reason
