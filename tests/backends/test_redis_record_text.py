"""A buffered record's field lines: the inlined cases write what value_json writes."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ccat_buffering_redis._frame import ms, ms_text
from ccat_buffering_redis._values import record_text, value_json


def reference(fields: dict[str, Any], record_id: str) -> str:
    folded = '"' + record_id + '"'
    lines = []
    for name, value in fields.items():
        text = value_json(value)
        lines.append(name + "=" + ("" if text == folded else text))
    return "\n".join(lines)


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), _values, max_size=6),
    st.sampled_from(["k1", "4f1ac0eb-d1c4-4abc-87e8-4aa0f1792d50", "a,b", "1"]),
)
def test_record_text_is_value_json_line_by_line(fields: dict[str, Any], record_id: str) -> None:
    assert record_text(fields, record_id) == reference(fields, record_id)


def test_the_key_folds_and_tagged_values_are_written_as_json() -> None:
    fields = {
        "id": "k1",
        "n": 1003,
        "flag": True,
        "when": {"$datetime": "2026-01-01T00:00:00+00:00"},
        "span": {"$timedelta": [0, 90, 0]},
        "name": "é",
    }
    assert record_text(fields, "k1") == (
        'id=\nn=1003\nflag=true\nwhen={"$datetime":"2026-01-01T00:00:00+00:00"}\n'
        'span={"$timedelta":[0,90,0]}\nname="\\u00e9"'
    )
    assert record_text(fields, "k1") == reference(fields, "k1")


def test_ttl_texts_are_the_milliseconds() -> None:
    for seconds in [3600.0, 3600, 0.0001, 1.5, 86400.25, 0]:
        assert ms_text(seconds) == str(ms(seconds))
