"""Transactions, steps and statuses: validation, lossless JSON, UTC timestamps, format."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccat_buffering.errors import (
    BufferingError,
    PayloadTooLargeError,
    TransactionValidationError,
)
from ccat_buffering.write._codec import decode_value, encode_value
from ccat_buffering.write.lsn import LSN
from ccat_buffering.write.models import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    FORMAT_VERSION,
    Operation,
    Ref,
    Step,
    Transaction,
    TransactionState,
    TransactionStatus,
    check_identifier,
    utc_now,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
CEST = dt.timezone(dt.timedelta(hours=2))


def _create(step_id: str = "s0", model: str = "M", **data: Any) -> dict[str, Any]:
    return {"step_id": step_id, "operation": "create", "model": model, "data": data}


def _tx(*steps: dict[str, Any], **fields: Any) -> Transaction:
    return Transaction.validate_python({"endpoint": "ep", "steps": list(steps), **fields})


def _rejected(*steps: dict[str, Any], **fields: Any) -> str:
    with pytest.raises(TransactionValidationError) as info:
        _tx(*steps, **fields)
    return str(info.value)


def _wire(*steps: dict[str, Any], **fields: Any) -> str:
    return json.dumps({"endpoint": "ep", "steps": list(steps), **fields})


# --------------------------------------------------------------------------- errors


def test_validation_errors_are_value_errors_in_the_library_tree() -> None:
    assert issubclass(TransactionValidationError, BufferingError)
    assert issubclass(TransactionValidationError, ValueError)
    assert issubclass(PayloadTooLargeError, TransactionValidationError)


def test_empty_steps_are_refused() -> None:
    message = _rejected()
    assert "steps" in message
    assert "at least 1" in message


def test_empty_steps_are_refused_from_json() -> None:
    with pytest.raises(TransactionValidationError, match=r"steps.*at least 1"):
        Transaction.from_json(_wire())


def test_unknown_operation_is_refused() -> None:
    step = {"step_id": "s0", "operation": "upsert", "model": "M", "data": {}}
    message = _rejected(step)
    assert "steps.0.operation" in message
    assert "unknown operation 'upsert'" in message
    assert "create" in message and "bulk_update" in message
    with pytest.raises(TransactionValidationError, match=r"steps\.0\.operation"):
        Transaction.from_json(_wire(step))


BAD_NAMES = [
    pytest.param("a:b", id="colon"),
    pytest.param("a*", id="star"),
    pytest.param("*", id="only-star"),
    pytest.param("{site}", id="braces"),
    pytest.param("a{", id="open-brace"),
    pytest.param("a}", id="close-brace"),
    pytest.param("a b", id="space"),
    pytest.param(" a", id="leading-space"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\n", id="trailing-newline"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\x1bb", id="escape"),
    pytest.param("a\x7f", id="delete"),
    pytest.param("", id="empty"),
    pytest.param("x" * 129, id="129-chars"),
    pytest.param("-a", id="leading-dash"),
    pytest.param(".a", id="leading-dot"),
    pytest.param("é", id="non-ascii"),
    pytest.param("a/b", id="slash"),
]

GOOD_NAMES = ["a", "_", "9", "ExecutedObsUnit", "raw_data_file", "a.b,c-d", "x" * 128]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_identifier_refuses_what_could_escape_a_key(name: str) -> None:
    with pytest.raises(TransactionValidationError) as info:
        check_identifier(name, "site")
    message = str(info.value)
    assert message.startswith(f"site {name!r} is not a plain identifier")
    assert "1 to 128" in message


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_check_identifier_accepts_plain_names(name: str) -> None:
    assert check_identifier(name, "site") == name


def test_check_identifier_refuses_a_non_string() -> None:
    with pytest.raises(TransactionValidationError, match="site 5 is not a plain identifier"):
        check_identifier(5, "site")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_model_name_must_be_plain(name: str) -> None:
    message = _rejected(_create(model=name))
    assert "steps.0.model" in message
    assert f"{name!r} is not a plain identifier" in message


@pytest.mark.parametrize("name", BAD_NAMES)
def test_step_id_must_be_plain(name: str) -> None:
    message = _rejected(_create(step_id=name))
    assert "steps.0.step_id" in message
    assert f"{name!r} is not a plain identifier" in message


@pytest.mark.parametrize("name", BAD_NAMES)
def test_endpoint_must_be_plain(name: str) -> None:
    message = _rejected(_create(), endpoint=name)
    assert "endpoint" in message
    assert f"{name!r} is not a plain identifier" in message


@pytest.mark.parametrize("name", ["a:b", "a b", "", "{x}", "a\n"])
def test_field_names_must_be_plain(name: str) -> None:
    message = _rejected(_create(**{name: 1}))
    assert "steps.0.data" in message
    assert f"{name!r} is not a plain identifier" in message


@pytest.mark.parametrize("name", ["a:b", "", "{x}"])
def test_key_field_names_must_be_plain(name: str) -> None:
    step = {**_create(), "key_fields": [name]}
    message = _rejected(step)
    assert "steps.0.key_fields" in message
    assert f"{name!r} is not a plain identifier" in message


@pytest.mark.parametrize("name", BAD_NAMES)
def test_name_check_applies_when_loading_json(name: str) -> None:
    with pytest.raises(TransactionValidationError, match="is not a plain identifier"):
        Transaction.from_json(_wire(_create(model=name)))


def test_ref_names_must_be_plain() -> None:
    with pytest.raises(pydantic.ValidationError, match="is not a plain identifier"):
        Ref(step="a:b", field="id")
    with pytest.raises(pydantic.ValidationError, match="is not a plain identifier"):
        Ref(step="s0", field="")


def test_duplicate_step_ids_are_refused() -> None:
    message = _rejected(_create("a"), _create("b"), _create("a"))
    assert "steps[2]" in message
    assert "step id 'a' is used twice" in message


def test_ref_to_a_missing_step_is_refused() -> None:
    message = _rejected(_create("s0"), _create("s1", parent=Ref(step="nope", field="id")))
    assert "steps[1] (s1)" in message
    assert "ref to step 'nope', which does not exist" in message


def test_ref_to_a_later_step_is_refused() -> None:
    message = _rejected(_create("s0", parent=Ref(step="s1", field="id")), _create("s1"))
    assert "steps[0] (s0)" in message
    assert "ref to step 's1', which comes later" in message


def test_ref_to_its_own_step_is_refused() -> None:
    message = _rejected(_create("s0", parent=Ref(step="s0", field="id")))
    assert "ref to step 's0'" in message


@pytest.mark.parametrize(
    "target",
    [
        {"step_id": "t", "operation": "delete", "model": "M", "key": {"id": 1}},
        {"step_id": "t", "operation": "bulk_create", "model": "M", "records": [{"id": 1}]},
        {"step_id": "t", "operation": "bulk_update", "model": "M", "records": [{"id": 1}]},
    ],
    ids=["delete", "bulk_create", "bulk_update"],
)
def test_ref_to_a_delete_or_bulk_step_is_refused(target: dict[str, Any]) -> None:
    message = _rejected(target, _create("s1", parent=Ref(step="t", field="id")))
    assert f"ref to step 't', a {target['operation']} step" in message
    assert "only create and update steps can be read" in message


@pytest.mark.parametrize("where", ["data", "key", "records"])
def test_refs_are_checked_in_every_payload_field(where: str) -> None:
    bad = Ref(step="nope", field="id")
    step: dict[str, Any] = {
        "data": {"step_id": "s1", "operation": "create", "model": "M", "data": {"x": bad}},
        "key": {
            "step_id": "s1",
            "operation": "update",
            "model": "M",
            "key": {"id": bad},
            "data": {},
        },
        "records": {
            "step_id": "s1",
            "operation": "bulk_update",
            "model": "M",
            "records": [{"id": 1}, {"id": bad}],
        },
    }[where]
    assert "which does not exist" in _rejected(_create("s0"), step)


def test_refs_to_create_and_update_steps_are_accepted() -> None:
    tx = _tx(
        _create("s0"),
        {"step_id": "s1", "operation": "update", "model": "M", "key": {"id": 1}, "data": {}},
        _create("s2", a=Ref(step="s0", field="id"), b=Ref(step="s1", field="version")),
    )
    assert tx.steps[2].refs() == [Ref(step="s0", field="id"), Ref(step="s1", field="version")]


PAYLOAD_CASES = [
    ("create", {}, "needs 'data'"),
    ("create", {"data": {}, "key": {"id": 1}}, "takes no 'key'"),
    ("create", {"data": {}, "records": [{}]}, "takes no 'records'"),
    ("update", {"data": {}}, "needs 'key'"),
    ("update", {"key": {"id": 1}}, "needs 'data'"),
    ("update", {"key": {"id": 1}, "data": {}, "records": [{}]}, "takes no 'records'"),
    ("update", {"key": {}, "data": {}}, "'key' names no field"),
    ("delete", {}, "needs 'key'"),
    ("delete", {"key": {"id": 1}, "data": {}}, "takes no 'data'"),
    ("delete", {"key": {}}, "'key' names no field"),
    ("bulk_create", {}, "needs 'records'"),
    ("bulk_create", {"records": []}, "needs at least one record"),
    ("bulk_create", {"records": [{}], "data": {}}, "takes no 'data'"),
    ("bulk_update", {}, "needs 'records'"),
    ("bulk_update", {"records": []}, "needs at least one record"),
    ("bulk_update", {"records": [{"id": 1}], "key": {"id": 1}}, "takes no 'key'"),
]


@pytest.mark.parametrize(("operation", "payload", "problem"), PAYLOAD_CASES)
def test_payload_fields_must_fit_the_operation(
    operation: str, payload: dict[str, Any], problem: str
) -> None:
    step = {"step_id": "s0", "operation": operation, "model": "M", **payload}
    message = _rejected(step)
    assert "steps.0" in message
    assert problem in message
    if not problem.startswith("'key'"):
        assert f"{operation} step" in message
    with pytest.raises(TransactionValidationError, match=problem):
        Transaction.from_json(_wire(step))


def test_bulk_update_records_must_hold_their_key_fields() -> None:
    step = {
        "step_id": "s0",
        "operation": "bulk_update",
        "model": "M",
        "records": [{"a": 1, "b": 2, "x": 0}, {"a": 1, "x": 0}],
        "key_fields": ["a", "b"],
    }
    message = _rejected(step)
    assert "records[1] lacks its key field(s) ['b']" in message


def test_a_step_alone_reports_pydantic_errors_as_value_errors() -> None:
    with pytest.raises(ValueError, match="a delete step needs 'key'"):
        Step(step_id="s0", operation=Operation.DELETE, model="M")


@pytest.mark.parametrize(
    "value",
    [object(), {1: "int key"}, [1, object()], {"a": {"b": {1, 2}}}, Ref(step="s0", field="id")],
    ids=["object", "int-key", "in-list", "set-in-dict", "nested-ref"],
)
def test_unsupported_value_type_is_refused_by_the_codec(value: Any) -> None:
    with pytest.raises(TypeError, match=r"^payload\.x"):
        encode_value({"x": value}, "payload")


def test_unsupported_value_type_message_names_field_and_type() -> None:
    with pytest.raises(TypeError) as info:
        encode_value({"obs": {"when": [1, object()]}}, "s0")
    message = str(info.value)
    assert message.startswith("s0.obs.when[1]: a value of type object cannot be buffered")
    assert "Decimal" in message


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"x": object()}, "s0.x: a value of type object"),
        ({"x": {"y": [1, object()]}}, "s0.x.y[1]: a value of type object"),
        ({"x": {1: "a"}}, "s0.x: mapping key 1 is not a string"),
    ],
    ids=["object", "nested", "int-key"],
)
def test_unsupported_value_type_is_refused_with_the_library_error(
    data: dict[str, Any], where: str
) -> None:
    tx = _tx(_create(**data))
    with pytest.raises(TransactionValidationError) as info:
        tx.to_json()
    assert where in str(info.value)


def _big(n: int) -> Transaction:
    return _tx(_create(blob="a" * n))


def test_payload_over_the_default_limit_is_refused() -> None:
    assert DEFAULT_MAX_PAYLOAD_BYTES == 1024 * 1024
    tx = _big(DEFAULT_MAX_PAYLOAD_BYTES)
    with pytest.raises(PayloadTooLargeError) as info:
        tx.to_json()
    message = str(info.value)
    assert tx.transaction_id in message
    assert "(ep)" in message
    assert f"over the limit of {DEFAULT_MAX_PAYLOAD_BYTES}" in message
    assert "max_payload_bytes" in message


def test_payload_limit_is_inclusive() -> None:
    tx = _big(1000)
    size = len(tx.to_json(None).encode())
    assert tx.to_json(size) == tx.to_json(None)
    with pytest.raises(
        PayloadTooLargeError, match=f"is {size} bytes, over the limit of {size - 1}"
    ):
        tx.to_json(size - 1)


def test_payload_limit_none_means_no_limit() -> None:
    tx = _big(2 * DEFAULT_MAX_PAYLOAD_BYTES)
    assert len(tx.to_json(None)) > 2 * DEFAULT_MAX_PAYLOAD_BYTES


def test_payload_limit_counts_utf8_bytes_not_characters() -> None:
    tx = _tx(_create(text="é" * 1000))
    text = tx.to_json(None)
    assert len(text.encode()) > len(text) + 900
    with pytest.raises(PayloadTooLargeError):
        tx.to_json(len(text))


def test_newer_format_version_is_refused_with_upgrade_advice() -> None:
    step = _create()
    with pytest.raises(TransactionValidationError) as info:
        Transaction.from_json(_wire(step, format_version=FORMAT_VERSION + 1))
    message = str(info.value)
    assert "format_version" in message
    assert f"format version {FORMAT_VERSION + 1} is not readable" in message
    assert "upgrade ccat-buffering" in message


def test_current_format_version_is_written_and_read() -> None:
    tx = _tx(_create())
    # Without a base a transaction stays format 1, readable by older releases.
    assert tx.format_version == 1 and FORMAT_VERSION == 2
    assert json.loads(tx.to_json())["format_version"] == 1
    assert Transaction.from_json(_wire(_create(), format_version=1)).format_version == 1


def test_a_step_with_a_base_is_written_as_format_2_and_read_back() -> None:
    step = {
        "step_id": "s0",
        "operation": "update",
        "model": "M",
        "key": {"id": 1},
        "data": {"n": 2},
        "expected": {"n": 1},
        "expected_version": 4,
    }
    tx = _tx(step)
    assert tx.format_version == 2
    back = Transaction.from_json(tx.to_json())
    assert back == tx
    assert back.steps[0].expected == {"n": 1} and back.steps[0].expected_version == 4
    with pytest.raises(TransactionValidationError, match="create step takes no base"):
        _tx({"step_id": "s0", "operation": "create", "model": "M", "data": {}, "expected": {}})


def test_transaction_id_must_be_a_uuid_and_is_canonical() -> None:
    message = _rejected(_create(), transaction_id="not-a-uuid")
    assert "transaction_id" in message
    upper = "6F1C2A9E-0000-4000-8000-00000000ABCD"
    assert _tx(_create(), transaction_id=upper).transaction_id == upper.lower()
    assert uuid.UUID(_tx(_create()).transaction_id).version == 4


def test_invalid_json_text_is_a_validation_error() -> None:
    with pytest.raises(TransactionValidationError, match="Invalid JSON"):
        Transaction.from_json("{not json")


def test_several_problems_are_all_reported() -> None:
    message = _rejected(_create(model="a:b"), endpoint="x y")
    assert "endpoint" in message
    assert "steps.0.model" in message


# --------------------------------------------------------------------------- codec


def _same(a: Any, b: Any) -> bool:
    """Equal in value and in type: what 'lossless' means here."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or repr(a) == repr(b)
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, dt.datetime | dt.time):
        return (
            a == b and a.utcoffset() == b.utcoffset() and (a.tzinfo is None) == (b.tzinfo is None)
        )
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# Whole seconds: CPython 3.11's fromisoformat reads "+00:00:00.000001" as UTC, and no real
# zone has a sub-second offset.
offsets = st.integers(min_value=-86399, max_value=86399).map(
    lambda seconds: dt.timezone(dt.timedelta(seconds=seconds))
)
zones = st.none() | st.just(dt.UTC) | offsets

leaf_values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.datetimes(timezones=zones)
    | st.dates()
    | st.times(timezones=zones)
    | st.timedeltas()
    | st.uuids()
    | st.decimals(allow_nan=False)
    | st.binary(max_size=20)
)
mapping_keys = (
    st.text(max_size=6)
    | st.text(max_size=6).map(lambda s: "$" + s)
    | st.sampled_from(["$map", "$ref", "$decimal", "$datetime", "$float", "$bytes", "$uuid"])
)
payload_values = st.recursive(
    leaf_values,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(mapping_keys, children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
records = st.dictionaries(field_names, payload_values, max_size=5)


@settings(max_examples=100, deadline=None)
@given(payload_values)
def test_codec_round_trips_every_supported_value(value: Any) -> None:
    text = json.dumps(encode_value(value), allow_nan=False)
    assert _same(decode_value(json.loads(text)), value)


@settings(max_examples=100, deadline=None)
@given(data=records, key=records, rows=st.lists(records, min_size=1, max_size=3))
def test_transaction_json_round_trip_is_lossless(
    data: dict[str, Any], key: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    tx = _tx(
        {"step_id": "s0", "operation": "create", "model": "M", "data": data},
        {
            "step_id": "s1",
            "operation": "update",
            "model": "M",
            "key": {"id": 1, **key},
            "data": data,
        },
        {"step_id": "s2", "operation": "bulk_create", "model": "M", "records": rows},
    )
    text = tx.to_json(None)
    # Strict JSON: no NaN/Infinity tokens that other readers would refuse.
    json.loads(text, parse_constant=lambda token: pytest.fail(f"bare {token} in JSON"))
    back = Transaction.from_json(text)
    assert back.transaction_id == tx.transaction_id
    assert back.created_at == tx.created_at
    for before, after in zip(tx.steps, back.steps, strict=True):
        assert after.operation is before.operation
        assert _same(after.data, before.data)
        assert _same(after.key, before.key)
        assert _same(after.records, before.records)
    assert back.to_json(None) == text


EXAMPLES: list[tuple[str, Any]] = [
    ("aware-datetime", dt.datetime(2025, 3, 14, 23, 5, 9, 123456, tzinfo=CEST)),
    ("utc-datetime", dt.datetime(2025, 3, 14, 23, 5, 9, tzinfo=dt.UTC)),
    ("naive-datetime", dt.datetime(2025, 3, 14, 23, 5, 9, 1)),
    ("date", dt.date(2025, 3, 14)),
    ("time", dt.time(23, 5, 9, 500)),
    ("aware-time", dt.time(23, 5, tzinfo=CEST)),
    ("timedelta", dt.timedelta(days=-2, seconds=5, microseconds=7)),
    ("uuid", uuid.UUID("5f0c8a2e-9b1d-4e7a-8c3f-2d6b4a1e9f07")),
    ("decimal-trailing-zero", Decimal("1.50")),
    ("decimal-exponent", Decimal("1E+3")),
    ("decimal-negative-zero", Decimal("-0.00")),
    ("decimal-infinity", Decimal("-Infinity")),
    ("bytes", b"\x00\xff\x10raw"),
    ("empty-bytes", b""),
    ("nan", float("nan")),
    ("inf", float("inf")),
    ("-inf", float("-inf")),
    ("negative-zero", -0.0),
    ("big-int", 2**80),
    ("list", [1, "two", None, [dt.date(2025, 1, 1)], {"k": Decimal("3.0")}]),
    ("dollar-key", {"$datetime": "not a date", "plain": 1}),
    ("only-dollar-key", {"$decimal": "1.5"}),
    ("map-key", {"$map": {"a": 1}}),
    ("ref-lookalike", {"$ref": {"step": "s0", "field": "id"}}),
    ("nested", {"a": {"b": {"$c": [dt.timedelta(1), b"x"]}}}),
    ("empty-dict", {}),
    ("empty-list", []),
    ("string-with-control", "line\nbreak\x00nul é ✓"),
]


@pytest.mark.parametrize(("name", "value"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_named_values_survive_a_round_trip(name: str, value: Any) -> None:
    tx = _tx(_create(v=value, w=[value], n={"deep": value}))
    back = Transaction.from_json(tx.to_json()).steps[0].data
    assert back is not None
    assert _same(back["v"], value)
    assert _same(back["w"], [value])
    assert _same(back["n"], {"deep": value})


def test_decimal_keeps_its_trailing_zero() -> None:
    tx = _tx(_create(pwv=Decimal("1.50")))
    assert '{"$decimal":"1.50"}' in tx.to_json()
    value = Transaction.from_json(tx.to_json()).steps[0].data["pwv"]  # type: ignore[index]
    assert isinstance(value, Decimal)
    assert str(value) == "1.50"


def test_a_user_dict_shaped_like_a_ref_stays_a_dict() -> None:
    lookalike = {"$ref": {"step": "s0", "field": "id"}}
    tx = _tx(_create(parent=lookalike))
    assert '"$map"' in tx.to_json()
    value = Transaction.from_json(tx.to_json()).steps[0].data["parent"]  # type: ignore[index]
    assert value == lookalike
    assert not isinstance(value, Ref)


def test_refs_survive_a_round_trip_as_refs() -> None:
    tx = _tx(
        _create("s0"),
        {
            "step_id": "s1",
            "operation": "update",
            "model": "M",
            "key": {"id": Ref(step="s0", field="id")},
            "data": {"parent": Ref(step="s0", field="code")},
        },
        {
            "step_id": "s2",
            "operation": "bulk_update",
            "model": "M",
            "records": [{"id": Ref(step="s0", field="id"), "x": 1}],
        },
    )
    back = Transaction.from_json(tx.to_json())
    assert back.steps[1].key == {"id": Ref(step="s0", field="id")}
    assert back.steps[1].data == {"parent": Ref(step="s0", field="code")}
    assert back.steps[2].records == [{"id": Ref(step="s0", field="id"), "x": 1}]
    assert back == tx


def test_none_values_are_kept_in_payloads() -> None:
    tx = _tx(_create(end_time=None, nested={"a": None}, items=[None]))
    data = Transaction.from_json(tx.to_json()).steps[0].data
    assert data == {"end_time": None, "nested": {"a": None}, "items": [None]}


def test_tuples_come_back_as_lists() -> None:
    tx = _tx(_create(pair=(1, 2)))
    assert Transaction.from_json(tx.to_json()).steps[0].data == {"pair": [1, 2]}


# --------------------------------------------------------------------------- time


def _is_utc(value: dt.datetime) -> bool:
    return value.tzinfo is not None and value.utcoffset() == dt.timedelta(0)


def test_utc_now_is_aware_utc() -> None:
    assert _is_utc(utc_now())


def test_created_at_defaults_to_now_in_utc() -> None:
    before = utc_now()
    tx = _tx(_create())
    assert _is_utc(tx.created_at)
    assert before <= tx.created_at <= utc_now()


def test_created_at_in_another_zone_is_converted_to_utc() -> None:
    local = dt.datetime(2025, 3, 15, 1, 0, tzinfo=CEST)
    tx = _tx(_create(), created_at=local)
    assert tx.created_at == local
    assert tx.created_at.tzinfo is dt.UTC
    assert tx.created_at.hour == 23
    assert json.loads(tx.to_json())["created_at"] == "2025-03-14T23:00:00Z"


def test_created_at_from_json_in_another_zone_is_converted_to_utc() -> None:
    tx = Transaction.from_json(_wire(_create(), created_at="2025-03-15T01:00:00+02:00"))
    assert tx.created_at == dt.datetime(2025, 3, 14, 23, 0, tzinfo=dt.UTC)
    assert tx.created_at.tzinfo is dt.UTC


def test_naive_created_at_is_refused() -> None:
    message = _rejected(_create(), created_at=dt.datetime(2025, 3, 14, 23, 0))
    assert "created_at" in message
    assert "timezone" in message
    with pytest.raises(TransactionValidationError, match="created_at"):
        Transaction.from_json(_wire(_create(), created_at="2025-03-14T23:00:00"))


def test_status_timestamps_default_to_now_in_utc() -> None:
    status = TransactionStatus(transaction_id="t", state=TransactionState.BUFFERED)
    assert _is_utc(status.created_at)
    assert _is_utc(status.updated_at)
    assert status.committed_at is None
    assert status.replicated_at is None


@pytest.mark.parametrize("name", ["created_at", "updated_at", "committed_at", "replicated_at"])
def test_status_timestamps_in_another_zone_are_converted_to_utc(name: str) -> None:
    local = dt.datetime(2025, 3, 15, 1, 0, tzinfo=CEST)
    status = TransactionStatus.model_validate(
        {"transaction_id": "t", "state": "committed", name: local}
    )
    value = getattr(status, name)
    assert value == local
    assert value.tzinfo is dt.UTC


@pytest.mark.parametrize("name", ["created_at", "updated_at", "committed_at", "replicated_at"])
def test_naive_status_timestamps_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        TransactionStatus.model_validate(
            {"transaction_id": "t", "state": "committed", name: dt.datetime(2025, 3, 15)}
        )


# --------------------------------------------------------------------------- states


@pytest.mark.parametrize(
    ("state", "terminal"),
    [
        (TransactionState.BUFFERED, False),
        (TransactionState.PROCESSING, False),
        (TransactionState.RETRYING, False),
        (TransactionState.COMMITTED, False),
        (TransactionState.REPLICATED, True),
        (TransactionState.FAILED, True),
        (TransactionState.CONFLICTED, False),
    ],
)
def test_is_terminal(state: TransactionState, terminal: bool) -> None:
    assert state.is_terminal is terminal


def test_every_state_is_classified() -> None:
    assert {s.value for s in TransactionState} == {
        "buffered",
        "processing",
        "retrying",
        "committed",
        "replicated",
        "failed",
        "conflicted",
    }
    assert {s for s in TransactionState if s.is_terminal} == {
        TransactionState.REPLICATED,
        TransactionState.FAILED,
    }


def test_advance_returns_a_new_status_in_the_new_state() -> None:
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    status = TransactionStatus(
        transaction_id="t",
        endpoint="ep",
        state=TransactionState.BUFFERED,
        created_at=start,
        updated_at=start,
    )
    retrying = status.advance(TransactionState.RETRYING, attempts=1, last_error="boom")
    assert retrying is not status
    assert status.state is TransactionState.BUFFERED
    assert status.attempts == 0
    assert retrying.state is TransactionState.RETRYING
    assert retrying.attempts == 1
    assert retrying.last_error == "boom"
    assert retrying.transaction_id == "t"
    assert retrying.endpoint == "ep"
    assert retrying.created_at == start
    assert retrying.updated_at > start
    assert _is_utc(retrying.updated_at)


def test_advance_to_committed_and_replicated() -> None:
    status = TransactionStatus(transaction_id="t", state=TransactionState.PROCESSING)
    now = utc_now()
    committed = status.advance(
        TransactionState.COMMITTED, commit_lsn=LSN("16/B374D848"), committed_at=now
    )
    assert committed.commit_lsn == LSN("16/B374D848")
    assert committed.committed_at == now
    replicated = committed.advance(TransactionState.REPLICATED, replicated_at=now)
    assert replicated.state.is_terminal
    assert replicated.commit_lsn == LSN("16/B374D848")


def test_advance_validates_its_changes() -> None:
    status = TransactionStatus(transaction_id="t", state=TransactionState.PROCESSING)
    committed = status.advance(TransactionState.COMMITTED, commit_lsn="16/B374D848")
    assert isinstance(committed.commit_lsn, LSN)
    with pytest.raises(ValueError, match="committed_at"):
        status.advance(TransactionState.COMMITTED, committed_at=dt.datetime(2025, 1, 1))


def test_status_cannot_be_changed_in_place() -> None:
    status = TransactionStatus(transaction_id="t", state=TransactionState.BUFFERED)
    with pytest.raises(pydantic.ValidationError):
        status.state = TransactionState.FAILED  # type: ignore[misc]


def test_status_json_round_trip_keeps_commit_lsn_as_lsn() -> None:
    now = dt.datetime(2025, 3, 14, 23, 5, 9, 123456, tzinfo=dt.UTC)
    status = TransactionStatus(
        transaction_id="t",
        endpoint="ep",
        state=TransactionState.COMMITTED,
        attempts=2,
        last_error="deadlock detected",
        commit_lsn=LSN("16/B374D848"),
        created_at=now,
        updated_at=now,
        committed_at=now,
    )
    text = status.model_dump_json()
    assert json.loads(text)["commit_lsn"] == "16/B374D848"
    back = TransactionStatus.model_validate_json(text)
    assert back == status
    assert isinstance(back.commit_lsn, LSN)
    assert back.commit_lsn == (0x16 << 32) | 0xB374D848
    assert back.state is TransactionState.COMMITTED
    assert back.committed_at == now
    assert back.committed_at is not None and back.committed_at.tzinfo is not None


def test_status_json_round_trip_without_commit_lsn() -> None:
    status = TransactionStatus(transaction_id="t", state=TransactionState.BUFFERED)
    back = TransactionStatus.model_validate_json(status.model_dump_json())
    assert back == status
    assert back.commit_lsn is None


def test_status_accepts_commit_lsn_as_text_or_int() -> None:
    a = TransactionStatus.model_validate(
        {"transaction_id": "t", "state": "committed", "commit_lsn": "1/0"}
    )
    b = TransactionStatus.model_validate(
        {"transaction_id": "t", "state": "committed", "commit_lsn": 2**32}
    )
    assert a.commit_lsn == b.commit_lsn == LSN("1/0")
    assert isinstance(a.commit_lsn, LSN)
    assert isinstance(b.commit_lsn, LSN)


# --------------------------------------------------------------------------- format v1


def test_format_v1_fixture_still_loads() -> None:
    # tests/fixtures/transaction_v1.json was written ONCE by Transaction.to_json() of a
    # TransactionBuilder transaction over ccat_buffering.demo.example (format_version 1).
    # NEVER regenerate or edit it: buffers in the field hold transactions in this format,
    # and every later release must keep loading it to exactly these values. A new format
    # gets a new fixture next to this one.
    text = (FIXTURES / "transaction_v1.json").read_text(encoding="utf-8")
    assert json.loads(text)["format_version"] == 1

    tx = Transaction.from_json(text)

    obs_id = "5f0c8a2e-9b1d-4e7a-8c3f-2d6b4a1e9f07"
    pkg_id = "a3d9e1f4-6c2b-4f8e-b7a0-1c5d9e2f3b48"
    assert tx.transaction_id == "0b7e6f1c-3d2a-4c59-9e8f-6a1b2c3d4e5f"
    assert tx.endpoint == "start_observation"
    assert tx.created_at == dt.datetime(2026, 11, 28, 19, 2, 23, 492131, tzinfo=dt.UTC)
    assert _is_utc(tx.created_at)
    assert [s.step_id for s in tx.steps] == ["s0", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert [s.operation for s in tx.steps] == [
        Operation.CREATE,
        Operation.CREATE,
        Operation.CREATE,
        Operation.UPDATE,
        Operation.DELETE,
        Operation.BULK_CREATE,
        Operation.BULK_UPDATE,
    ]
    assert all(s.key_fields == ("id",) for s in tx.steps)

    obs, pkg, raw, update, delete, bulk_create, bulk_update = tx.steps

    assert obs.model == "ExecutedObsUnit"
    assert obs.key is None and obs.records is None
    assert obs.data is not None
    assert list(obs.data) == ["id", "obs_unit_id", "status", "start_time", "mean_pwv", "metadata"]
    assert obs.data["id"] == uuid.UUID(obs_id)
    assert isinstance(obs.data["id"], uuid.UUID)
    assert obs.data["obs_unit_id"] == 7
    assert type(obs.data["obs_unit_id"]) is int
    assert obs.data["status"] == "running"
    start = obs.data["start_time"]
    assert type(start) is dt.datetime
    assert start == dt.datetime(2025, 3, 14, 23, 5, 9, 123456, tzinfo=dt.UTC)
    assert _is_utc(start)
    pwv = obs.data["mean_pwv"]
    assert isinstance(pwv, Decimal)
    assert str(pwv) == "0.850"
    assert obs.data["metadata"] == {
        "instrument": {"name": "Prime-Cam", "modules": [1, 2, 3]},
        "$note": "kept",
    }

    assert pkg.model == "RawDataPackage"
    assert pkg.data == {"id": pkg_id, "executed_obs_unit_id": obs_id, "name": "pkg-0001"}
    assert all(type(v) is str for v in pkg.data.values())

    assert raw.model == "RawDataFile"
    assert raw.data == {
        "raw_data_package_id": pkg_id,
        "path": "pkg-0001/scan-0001.fits",
        "size_bytes": 1024,
    }

    assert update.model == "ExecutedObsUnit"
    assert update.key == {"id": obs_id}
    assert update.data is not None
    assert update.data == {
        "status": "finished",
        "end_time": dt.datetime(2025, 3, 15, 0, 35, tzinfo=dt.UTC),
    }
    assert _is_utc(update.data["end_time"])

    assert delete.model == "RawDataFile"
    assert delete.key == {"id": 41}
    assert delete.data is None and delete.records is None

    assert bulk_create.model == "RawDataFile"
    assert bulk_create.records == [
        {"raw_data_package_id": pkg_id, "path": "pkg-0001/scan-0002.fits", "size_bytes": 2048},
        {"raw_data_package_id": pkg_id, "path": "pkg-0001/scan-0003.fits", "size_bytes": 4096},
    ]

    assert bulk_update.model == "RawDataFile"
    assert bulk_update.records is not None
    ref = bulk_update.records[0]["id"]
    assert isinstance(ref, Ref)
    assert ref == Ref(step="s2", field="id")
    assert bulk_update.records == [
        {"id": Ref(step="s2", field="id"), "size_bytes": 1536},
        {"id": 17, "size_bytes": 8192},
    ]
    assert bulk_update.refs() == [Ref(step="s2", field="id")]
