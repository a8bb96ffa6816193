"""The rules of conflicts that need no database: merge patches, policies, bases, formats."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from writers import Base, Note, Versioned

from ccat_buffering import BufferingSettings, ConflictPolicies, ConflictPolicy, TransactionBuilder
from ccat_buffering.conflicts import merge_patch, patch_between
from ccat_buffering.conflicts.bases import stamp_write_time, with_bases
from ccat_buffering.errors import ConfigurationError, DatabaseUnavailableError
from ccat_buffering.site._wiring import apply_conflict_settings
from ccat_buffering.write.registry import ModelRegistry


def test_merge_patch_follows_rfc_7386() -> None:
    # The examples of RFC 7386, appendix A (a few).
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch(["a", "b"], ["c", "d"]) == ["c", "d"]
    assert merge_patch({"a": "b"}, ["c"]) == ["c"]
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}


def test_patch_between_carries_only_what_the_writer_changed() -> None:
    base = {"object": "m31", "tau": 0.1, "old": 1, "deep": {"x": 1, "y": 2}}
    mine = {"object": "m31", "tau": 0.2, "deep": {"x": 1, "y": 3}}
    patch = patch_between(base, mine)
    assert patch == {"tau": 0.2, "old": None, "deep": {"y": 3}}
    assert merge_patch(base, patch) == mine
    theirs = {**base, "seeing": 0.7}
    assert merge_patch(theirs, patch) == {**mine, "seeing": 0.7}


def test_policies_by_model_and_column_and_their_mistakes() -> None:
    policies = ConflictPolicies.parse(
        {"Note": "overwrite", "Note.meta": "merge", "Other": "newer_wins"},
        {"Other": "written_at"},
    )
    assert policies.of_model("Note") is ConflictPolicy.OVERWRITE
    assert policies.of_field("Note", "meta") is ConflictPolicy.MERGE
    assert policies.of_field("Note", "status") is ConflictPolicy.OVERWRITE
    assert policies.of_model("Unnamed") is ConflictPolicy.REJECT
    assert policies.write_time_of("Other") == "written_at"
    with pytest.raises(ConfigurationError, match="'maybe' for Note is not one of reject"):
        ConflictPolicies.parse({"Note": "maybe"})
    with pytest.raises(ConfigurationError, match="newer_wins for Note needs a write-time column"):
        ConflictPolicies.parse({"Note": "newer_wins"})


def test_settings_fill_what_code_left_unset() -> None:
    registry = ModelRegistry.from_base(Base)
    registry.conflict_policies.set("Note", "merge")
    settings = BufferingSettings(  # type: ignore[call-arg]
        site_name="s", conflict_policies={"Note": "overwrite", "Versioned": "overwrite"}
    )
    apply_conflict_settings(settings, registry)
    assert registry.conflict_policies.of_model("Note") is ConflictPolicy.MERGE  # code wins
    assert registry.conflict_policies.of_model("Versioned") is ConflictPolicy.OVERWRITE


def _view(rows: Mapping[Any, dict[str, Any]]) -> Any:
    async def view(model: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
        return rows.get(next(iter(key.values())))

    return view


async def test_default_bases_come_from_the_view_and_later_steps_see_earlier_ones() -> None:
    registry = ModelRegistry.from_base(Base)
    key, ver = uuid.uuid4(), uuid.uuid4()
    rows = {
        key: {"id": key, "title": "t", "status": "new", "meta": None, "code": None},
        ver: {"id": ver, "name": "v", "version": 4},
    }
    tx = TransactionBuilder("e", registry=registry)
    tx.update(Note, key, {"status": "a"})
    tx.update(Note, key, {"status": "b", "title": "u"})
    tx.update(Versioned, ver, {"name": "w"})
    tx.delete(Note, key)
    based = await with_bases(tx.build(), _view(rows), registry)
    first, second, versioned, gone = based.steps
    assert first.expected == {"status": "new"}
    assert second.expected == {"status": "a", "title": "t"}  # what the first step left
    assert (versioned.expected, versioned.expected_version) == ({"name": "v"}, 4)
    assert versioned.data == {"name": "w", "version": 5}
    assert gone.expected == {"title": "u", "status": "b", "meta": None, "code": None}
    assert based.format_version == 2
    assert based.to_json() and based == type(based).from_json(based.to_json())


async def test_no_base_where_the_site_cannot_see_the_row_or_one_was_given() -> None:
    registry = ModelRegistry.from_base(Base)

    async def down(model: str, key: Mapping[str, Any]) -> None:
        raise DatabaseUnavailableError("replica not answering")

    tx = TransactionBuilder("e", registry=registry)
    tx.update(Note, uuid.uuid4(), {"status": "a"})
    tx.update(Note, uuid.uuid4(), {"status": "b"}, expected={"status": "x"})
    built = tx.build()
    based = await with_bases(built, down, registry)
    assert based.steps[0].expected is None and based.steps[1].expected == {"status": "x"}


def test_the_write_time_is_stamped_at_write_time() -> None:
    import datetime as dt

    registry = ModelRegistry.from_base(Base)
    registry.conflict_policies.set("Note", "newer_wins", write_time="written_at")
    tx = TransactionBuilder("e", registry=registry)
    tx.create(Note, {"title": "t"})
    tx.update(Note, uuid.uuid4(), {"status": "s"})
    now = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    stamped = stamp_write_time(tx.build(), registry, now)
    assert [s.data["written_at"] for s in stamped.steps] == [now, now]  # type: ignore[index]


def test_version_id_col_creates_get_the_first_version() -> None:
    registry = ModelRegistry.from_base(Base)
    tx = TransactionBuilder("e", registry=registry)
    tx.create(Versioned, {"name": "v"})  # refused before: 'version' NOT NULL, no default
    assert tx.build().steps[0].data["version"] == 1  # type: ignore[index]
