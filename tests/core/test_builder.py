"""TransactionBuilder: steps, pre-generated keys, handles and references."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Integer, String, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ccat_buffering.demo.example import ExecutedObsUnit, RawDataFile, RawDataPackage
from ccat_buffering.errors import PayloadTooLargeError, TransactionValidationError
from ccat_buffering.write.builder import RecordHandle, TransactionBuilder
from ccat_buffering.write.models import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Operation,
    Ref,
    Transaction,
)

NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)


class _Base(DeclarativeBase):
    pass


class Scan(_Base):
    """A model with a composite primary key."""

    __tablename__ = "scan"

    site: Mapped[str] = mapped_column(String(16), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    note: Mapped[str] = mapped_column(String(64))


class Calibration(_Base):
    """A model whose key is a native UUID column."""

    __tablename__ = "calibration"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))


def _uuid_text(value: str | None) -> uuid.UUID:
    assert isinstance(value, str)
    parsed = uuid.UUID(value)
    assert str(parsed) == value
    return parsed


# --------------------------------------------------------------------------- create


def test_create_by_name_pre_generates_a_uuid_string_id() -> None:
    tx = TransactionBuilder("start_observation")
    obs = tx.create("ExecutedObsUnit", {"obs_unit_id": 7, "status": "running"})
    assert isinstance(obs, RecordHandle)
    assert obs.step_id == "s0"
    assert obs.model == "ExecutedObsUnit"
    assert _uuid_text(obs.id).version == 4
    step = tx.build().steps[0]
    assert step.operation is Operation.CREATE
    assert step.model == "ExecutedObsUnit"
    assert step.data == {"obs_unit_id": 7, "status": "running", "id": obs.id}
    assert step.key_fields == ("id",)


def test_each_create_gets_its_own_id() -> None:
    tx = TransactionBuilder("ep")
    ids = {tx.create("M", {}).id for _ in range(50)}
    assert len(ids) == 50


def test_handle_id_is_usable_as_a_foreign_key_in_later_steps() -> None:
    tx = TransactionBuilder("start_observation")
    obs = tx.create(ExecutedObsUnit, {"obs_unit_id": 7, "status": "running", "start_time": NOW})
    pkg = tx.create(RawDataPackage, {"executed_obs_unit_id": obs.id, "name": "pkg-1"})
    tx.create(RawDataFile, {"raw_data_package_id": pkg.id, "path": "a.fits", "size_bytes": 1})
    transaction = tx.build()
    assert transaction.steps[1].data == {
        "executed_obs_unit_id": obs.id,
        "name": "pkg-1",
        "id": pkg.id,
    }
    assert transaction.steps[2].data is not None
    assert transaction.steps[2].data["raw_data_package_id"] == pkg.id
    # Plain values, not references: the ids are known before the database sees them.
    assert transaction.steps[1].refs() == []
    back = Transaction.from_json(transaction.to_json())
    assert back.steps[1].data == transaction.steps[1].data


def test_create_by_mapped_class_with_a_string_key_pre_generates_it() -> None:
    tx = TransactionBuilder("ep")
    obs = tx.create(
        ExecutedObsUnit,
        {"obs_unit_id": 7, "status": "running", "start_time": dt.datetime.now(dt.UTC)},
    )
    assert obs.model == "ExecutedObsUnit"
    _uuid_text(obs.id)
    step = tx.build().steps[0]
    assert step.model == "ExecutedObsUnit"
    assert step.data is not None and step.data["id"] == obs.id
    assert step.key_fields == ("id",)


def test_create_by_mapped_class_with_a_native_uuid_key_pre_generates_it() -> None:
    tx = TransactionBuilder("ep")
    cal = tx.create(Calibration, {"name": "flat"})
    _uuid_text(cal.id)


def test_create_with_an_autoincrement_key_leaves_it_to_the_database() -> None:
    tx = TransactionBuilder("ep")
    pkg = tx.create("RawDataPackage", {"executed_obs_unit_id": "x", "name": "p"})
    raw = tx.create(RawDataFile, {"raw_data_package_id": pkg.id, "path": "a", "size_bytes": 1})
    assert raw.id is None
    assert raw.model == "RawDataFile"
    assert raw.step_id == "s1"
    assert raw.ref("id") == Ref(step="s1", field="id")
    step = tx.build().steps[1]
    assert step.data is not None and "id" not in step.data
    assert step.key_fields == ("id",)


def test_ref_is_how_to_refer_to_a_database_generated_key() -> None:
    tx = TransactionBuilder("ep")
    raw = tx.create(RawDataFile, {"raw_data_package_id": "p", "path": "a", "size_bytes": 1})
    tx.update(RawDataFile, {"id": raw.ref("id")}, {"size_bytes": 2})
    tx.create("Checksum", {"raw_data_file_id": raw.ref("id"), "sha256": "00"})
    transaction = tx.build()
    assert transaction.steps[1].key == {"id": Ref(step="s0", field="id")}
    assert transaction.steps[2].refs() == [Ref(step="s0", field="id")]
    back = Transaction.from_json(transaction.to_json())
    assert back.steps[2].data is not None
    assert back.steps[2].data["raw_data_file_id"] == Ref(step="s0", field="id")
    assert back.steps[1].key == {"id": Ref(step="s0", field="id")}


def test_create_keeps_a_given_id() -> None:
    tx = TransactionBuilder("ep")
    by_name = tx.create("M", {"id": "given-1"})
    obs = {"obs_unit_id": 1, "status": "s", "start_time": NOW}
    by_class = tx.create(ExecutedObsUnit, {"id": "given-2", **obs})
    autoinc = tx.create(
        RawDataFile, {"id": 5, "path": "a", "raw_data_package_id": "p", "size_bytes": 0}
    )
    as_uuid = tx.create("M", {"id": uuid.UUID("5f0c8a2e-9b1d-4e7a-8c3f-2d6b4a1e9f07")})
    assert by_name.id == "given-1"
    assert by_class.id == "given-2"
    assert autoinc.id == "5"
    assert as_uuid.id == "5f0c8a2e-9b1d-4e7a-8c3f-2d6b4a1e9f07"
    steps = tx.build().steps
    assert steps[0].data == {"id": "given-1"}
    assert steps[1].data == {"id": "given-2", **obs}
    assert steps[2].data == {"id": 5, "path": "a", "raw_data_package_id": "p", "size_bytes": 0}
    assert steps[3].data == {"id": uuid.UUID("5f0c8a2e-9b1d-4e7a-8c3f-2d6b4a1e9f07")}


def test_create_does_not_change_the_callers_mapping() -> None:
    data: dict[str, Any] = {"obs_unit_id": 1}
    TransactionBuilder("ep").create("M", data)
    assert data == {"obs_unit_id": 1}


def test_create_with_a_composite_key_generates_nothing() -> None:
    tx = TransactionBuilder("ep")
    scan = tx.create(Scan, {"site": "fyst", "number": 3, "note": "x"})
    assert scan.id is None
    assert tx.build().steps[0].key_fields == ("site", "number")


def test_create_keeps_every_value_type() -> None:
    tx = TransactionBuilder("ep")
    tx.create(
        ExecutedObsUnit,
        {
            "obs_unit_id": 7,
            "status": "done",
            "start_time": dt.datetime(2025, 3, 14, 23, 5, tzinfo=dt.UTC),
            "mean_pwv": Decimal("0.850"),
        },
    )
    data = Transaction.from_json(tx.build().to_json()).steps[0].data
    assert data is not None
    assert data["start_time"] == dt.datetime(2025, 3, 14, 23, 5, tzinfo=dt.UTC)
    assert str(data["mean_pwv"]) == "0.850"


# --------------------------------------------------------------------------- update / delete


def test_update_with_a_scalar_key() -> None:
    tx = TransactionBuilder("ep")
    handle = tx.update(ExecutedObsUnit, "abc", {"status": "done"})
    assert handle == RecordHandle("s0", "ExecutedObsUnit", "abc", "abc")
    step = tx.build().steps[0]
    assert step.operation is Operation.UPDATE
    assert step.key == {"id": "abc"}
    assert step.data == {"status": "done"}
    assert step.key_fields == ("id",)


def test_update_by_name_with_a_scalar_key_uses_id() -> None:
    tx = TransactionBuilder("ep")
    handle = tx.update("RawDataFile", 17, {"size_bytes": 2})
    assert handle.id == "17"
    assert tx.build().steps[0].key == {"id": 17}


def test_update_with_a_mapping_key() -> None:
    tx = TransactionBuilder("ep")
    handle = tx.update("M", {"site": "fyst", "number": 3}, {"note": "y"})
    assert handle.id is None
    step = tx.build().steps[0]
    assert step.key == {"site": "fyst", "number": 3}
    assert step.key_fields == ("site", "number")


def test_update_with_a_single_field_mapping_key() -> None:
    tx = TransactionBuilder("ep")
    handle = tx.update(RawDataFile, {"id": 9}, {"size_bytes": 2})
    assert handle.id == "9"
    assert tx.build().steps[0].key == {"id": 9}


def test_update_with_a_ref_key_has_no_known_id() -> None:
    tx = TransactionBuilder("ep")
    raw = tx.create(RawDataFile, {"path": "a", "raw_data_package_id": "p", "size_bytes": 1})
    assert tx.update(RawDataFile, raw.ref("id"), {"size_bytes": 2}).id is None
    assert tx.update(RawDataFile, {"id": raw.ref("id")}, {"size_bytes": 3}).id is None


def test_delete_with_a_scalar_key() -> None:
    tx = TransactionBuilder("ep")
    assert tx.delete(RawDataFile, 41) is None
    step = tx.build().steps[0]
    assert step.operation is Operation.DELETE
    assert step.model == "RawDataFile"
    assert step.key == {"id": 41}
    assert step.data is None
    assert step.records is None


def test_delete_with_a_mapping_key() -> None:
    tx = TransactionBuilder("ep")
    tx.delete(Scan, {"site": "fyst", "number": 3})
    step = tx.build().steps[0]
    assert step.key == {"site": "fyst", "number": 3}
    assert step.key_fields == ("site", "number")


@pytest.mark.parametrize("operation", ["update", "delete"])
def test_a_composite_key_needs_a_mapping(operation: str) -> None:
    tx = TransactionBuilder("ep")
    with pytest.raises(TransactionValidationError) as info:
        if operation == "update":
            tx.update(Scan, "fyst", {"note": "x"})
        else:
            tx.delete(Scan, 3)
    message = str(info.value)
    assert "Scan has the composite key ('site', 'number')" in message
    assert "pass the key as a mapping" in message


@pytest.mark.parametrize("operation", ["update", "delete"])
def test_an_empty_key_mapping_is_refused(operation: str) -> None:
    tx = TransactionBuilder("ep")
    with pytest.raises(TransactionValidationError, match="'key' names no field"):
        if operation == "update":
            tx.update("M", {}, {"x": 1})
        else:
            tx.delete("M", {})


# --------------------------------------------------------------------------- bulk


def test_bulk_create_returns_a_handle_per_record_in_order() -> None:
    tx = TransactionBuilder("ep")
    handles = tx.bulk_create(
        RawDataPackage,
        [{"name": n, "executed_obs_unit_id": "o"} for n in "abc"],
    )
    assert [h.step_id for h in handles] == ["s0"] * 3
    assert [h.model for h in handles] == ["RawDataPackage"] * 3
    _uuid_text(handles[1].id)
    _uuid_text(handles[0].id)
    _uuid_text(handles[2].id)
    assert handles[0].id != handles[2].id
    step = tx.build().steps[0]
    assert step.operation is Operation.BULK_CREATE
    assert step.records == [
        {"name": n, "executed_obs_unit_id": "o", "id": h.id}
        for n, h in zip("abc", handles, strict=True)
    ]


def test_bulk_create_handles_are_usable_as_foreign_keys() -> None:
    tx = TransactionBuilder("ep")
    packages = tx.bulk_create("RawDataPackage", [{"name": "a"}, {"name": "b"}])
    tx.bulk_create(
        RawDataFile,
        [
            {"raw_data_package_id": p.id, "path": f"{i}.fits", "size_bytes": i}
            for i, p in enumerate(packages)
        ],
    )
    records = tx.build().steps[1].records
    assert records is not None
    assert [r["raw_data_package_id"] for r in records] == [p.id for p in packages]


def test_bulk_create_with_an_autoincrement_key_leaves_ids_unknown() -> None:
    tx = TransactionBuilder("ep")
    file = {"raw_data_package_id": "p", "size_bytes": 1}
    handles = tx.bulk_create(RawDataFile, [{"path": "a", **file}, {"path": "b", "id": 3, **file}])
    assert [h.id for h in handles] == [None, "3"]
    assert tx.build().steps[0].records == [{"path": "a", **file}, {"path": "b", "id": 3, **file}]


def test_bulk_create_with_a_composite_key() -> None:
    tx = TransactionBuilder("ep")
    handles = tx.bulk_create(Scan, [{"site": "a", "number": 1, "note": ""}])
    assert [h.id for h in handles] == [None]


def test_bulk_create_needs_a_record() -> None:
    with pytest.raises(TransactionValidationError, match="needs at least one record"):
        TransactionBuilder("ep").bulk_create("M", [])


def test_bulk_update() -> None:
    tx = TransactionBuilder("ep")
    assert tx.bulk_update(RawDataFile, [{"id": 1, "size_bytes": 10}, {"id": 2}]) is None
    step = tx.build().steps[0]
    assert step.operation is Operation.BULK_UPDATE
    assert step.records == [{"id": 1, "size_bytes": 10}, {"id": 2}]
    assert step.key_fields == ("id",)


def test_bulk_update_records_must_hold_their_key_fields() -> None:
    tx = TransactionBuilder("ep")
    with pytest.raises(TransactionValidationError) as info:
        tx.bulk_update("RawDataFile", [{"id": 1, "size_bytes": 1}, {"size_bytes": 2}])
    message = str(info.value)
    assert "step 0 (bulk_update RawDataFile)" in message
    assert "records[1] lacks its key field(s) ['id']" in message


def test_bulk_update_with_a_composite_key_needs_every_key_field() -> None:
    tx = TransactionBuilder("ep")
    tx.bulk_update(Scan, [{"site": "a", "number": 1, "note": "x"}])
    with pytest.raises(TransactionValidationError, match=r"records\[0\] lacks .*\['number'\]"):
        tx.bulk_update(Scan, [{"site": "a", "note": "x"}])
    assert tx.build().steps[0].key_fields == ("site", "number")


# --------------------------------------------------------------------------- build


def test_build_returns_a_validated_transaction() -> None:
    tx = TransactionBuilder("start_observation")
    obs = tx.create("ExecutedObsUnit", {"obs_unit_id": 7})
    tx.update("ExecutedObsUnit", obs.id, {"status": "done"})
    tx.delete("RawDataFile", 1)
    tx.bulk_create("RawDataFile", [{"path": "a"}])
    tx.bulk_update("RawDataFile", [{"id": 1, "path": "b"}])
    transaction = tx.build()
    assert isinstance(transaction, Transaction)
    assert transaction.endpoint == "start_observation"
    assert transaction.transaction_id == tx.transaction_id
    _uuid_text(transaction.transaction_id)
    assert [s.operation for s in transaction.steps] == list(Operation)
    assert Transaction.from_json(transaction.to_json()) == transaction


def test_step_ids_are_s0_s1_and_so_on() -> None:
    tx = TransactionBuilder("ep")
    tx.create("M", {})
    tx.update("M", 1, {"x": 1})
    tx.delete("M", 2)
    tx.bulk_create("M", [{}])
    tx.bulk_update("M", [{"id": 1}])
    assert [s.step_id for s in tx.build().steps] == ["s0", "s1", "s2", "s3", "s4"]


def test_a_named_step_keeps_its_name_and_numbering_goes_on() -> None:
    tx = TransactionBuilder("ep")
    obs = tx.create("M", {}, step_id="obs")
    after = tx.create("M", {"parent": obs.ref("id")})
    assert obs.step_id == "obs"
    assert after.step_id == "s1"
    assert [s.step_id for s in tx.build().steps] == ["obs", "s1"]


def test_a_refused_step_is_not_added() -> None:
    tx = TransactionBuilder("ep")
    with pytest.raises(TransactionValidationError):
        tx.create("bad:name", {})
    assert tx.create("M", {}).step_id == "s0"
    assert len(tx.build().steps) == 1


def test_a_given_transaction_id_is_kept_in_canonical_form() -> None:
    given = "6F1C2A9E-0000-4000-8000-00000000ABCD"
    tx = TransactionBuilder("ep", transaction_id=given)
    tx.create("M", {})
    assert tx.build().transaction_id == given.lower()


def test_an_invalid_transaction_id_is_refused_at_build() -> None:
    tx = TransactionBuilder("ep", transaction_id="nope")
    tx.create("M", {})
    with pytest.raises(TransactionValidationError, match="transaction_id"):
        tx.build()


def test_build_refuses_an_empty_transaction() -> None:
    with pytest.raises(TransactionValidationError, match=r"steps.*at least 1"):
        TransactionBuilder("ep").build()


@pytest.mark.parametrize("endpoint", ["a:b", "", "x y", "{ep}", "e\n", "x" * 129])
def test_build_refuses_an_endpoint_that_is_not_plain(endpoint: str) -> None:
    tx = TransactionBuilder(endpoint)
    tx.create("M", {})
    with pytest.raises(TransactionValidationError) as info:
        tx.build()
    assert f"endpoint: name {endpoint!r} is not a plain identifier" in str(info.value)


@pytest.mark.parametrize("name", ["a:b", "a*", "{M}", "a b", "a\nb", "", "x" * 129])
def test_builder_refuses_a_model_name_that_is_not_plain(name: str) -> None:
    with pytest.raises(TransactionValidationError) as info:
        TransactionBuilder("ep").create(name, {})
    message = str(info.value)
    assert message.startswith(f"step 0 (create {name})")
    assert f"model: name {name!r} is not a plain identifier" in message


@pytest.mark.parametrize("step_id", ["a:b", "s*", "{s}", "s 1", "s\x00", "", "s" * 129])
def test_builder_refuses_a_step_id_that_is_not_plain(step_id: str) -> None:
    with pytest.raises(TransactionValidationError) as info:
        TransactionBuilder("ep").delete("M", 1, step_id=step_id)
    assert f"step_id: name {step_id!r} is not a plain identifier" in str(info.value)


def test_builder_refuses_a_field_name_that_is_not_plain() -> None:
    with pytest.raises(TransactionValidationError, match="'a:b' is not a plain identifier"):
        TransactionBuilder("ep").create("M", {"a:b": 1})


def test_builder_refuses_a_class_that_is_not_mapped() -> None:
    with pytest.raises(TransactionValidationError, match="neither a model name nor"):
        TransactionBuilder("ep").create(dict, {})


def test_build_refuses_duplicate_step_ids() -> None:
    tx = TransactionBuilder("ep")
    tx.create("M", {}, step_id="s1")
    tx.create("M", {})  # numbered s1 as well
    with pytest.raises(TransactionValidationError, match="step id 's1' is used twice"):
        tx.build()


def test_build_refuses_a_ref_to_a_later_step() -> None:
    tx = TransactionBuilder("ep")
    tx.create("M", {"parent": Ref(step="later", field="id")})
    tx.create("M", {}, step_id="later")
    with pytest.raises(TransactionValidationError, match="ref to step 'later', which comes later"):
        tx.build()


def test_build_refuses_a_ref_to_a_missing_step() -> None:
    tx = TransactionBuilder("ep")
    tx.create("M", {"parent": Ref(step="ghost", field="id")})
    with pytest.raises(TransactionValidationError, match="ref to step 'ghost', which does not"):
        tx.build()


@pytest.mark.parametrize("operation", ["delete", "bulk_create", "bulk_update"])
def test_build_refuses_a_ref_to_a_delete_or_bulk_step(operation: str) -> None:
    tx = TransactionBuilder("ep")
    if operation == "delete":
        tx.delete("M", 1)
    elif operation == "bulk_create":
        tx.bulk_create("M", [{}])
    else:
        tx.bulk_update("M", [{"id": 1}])
    tx.create("M", {"parent": Ref(step="s0", field="id")})
    with pytest.raises(TransactionValidationError) as info:
        tx.build()
    assert f"ref to step 's0', a {operation} step" in str(info.value)


def test_build_refuses_a_payload_over_the_default_limit() -> None:
    tx = TransactionBuilder("ep")
    tx.create("M", {"blob": "a" * DEFAULT_MAX_PAYLOAD_BYTES})
    with pytest.raises(PayloadTooLargeError) as info:
        tx.build()
    message = str(info.value)
    assert f"over the limit of {DEFAULT_MAX_PAYLOAD_BYTES}" in message
    assert "split it, or raise max_payload_bytes" in message


def test_build_takes_a_payload_just_under_the_default_limit() -> None:
    tx = TransactionBuilder("ep")
    tx.create("M", {"blob": "a" * (DEFAULT_MAX_PAYLOAD_BYTES - 1000)})
    tx.build()


def test_build_checks_a_custom_limit() -> None:
    small = TransactionBuilder("ep", max_payload_bytes=500)
    small.create("M", {"blob": "a" * 600})
    with pytest.raises(PayloadTooLargeError, match="over the limit of 500"):
        small.build()
    roomy = TransactionBuilder("ep", max_payload_bytes=2000)
    roomy.create("M", {"blob": "a" * 600})
    roomy.build()


def test_build_without_a_limit() -> None:
    tx = TransactionBuilder("ep", max_payload_bytes=None)
    tx.create("M", {"blob": "a" * (DEFAULT_MAX_PAYLOAD_BYTES + 1)})
    assert len(tx.build().to_json(None)) > DEFAULT_MAX_PAYLOAD_BYTES


def test_build_refuses_an_unsupported_value_naming_the_field() -> None:
    tx = TransactionBuilder("ep")
    tx.create("M", {"ok": 1, "bad": object()}, step_id="obs")
    with pytest.raises(TransactionValidationError) as info:
        tx.build()
    message = str(info.value)
    assert "obs.bad" in message
    assert "a value of type object cannot be buffered" in message


def test_a_composite_key_is_kept_in_the_models_key_order() -> None:
    from sqlalchemy import String
    from sqlalchemy.orm import DeclarativeBase, mapped_column

    class KeyBase(DeclarativeBase):
        pass

    class Pair(KeyBase):
        __tablename__ = "pair"
        a: Mapped[str] = mapped_column(String(8), primary_key=True)
        b: Mapped[str] = mapped_column(String(8), primary_key=True)
        v: Mapped[str] = mapped_column(String(8))

    tx = TransactionBuilder("x")
    tx.update(Pair, {"b": "y", "a": "x"}, {"v": "1"})
    (step,) = tx.build().steps
    assert list(step.key or {}) == ["a", "b"] and step.key_fields == ("a", "b")
