"""LSN: PostgreSQL's ``X/Y`` text, parsed into the 64-bit integer it stands for."""

from __future__ import annotations

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccat_buffering.write.lsn import LSN, LSNField

lsn_ints = st.integers(min_value=0, max_value=2**64 - 1)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("0/1", 1),
        ("0/10", 16),
        ("0/FFFFFFFF", 2**32 - 1),
        ("1/0", 2**32),
        ("16/B374D848", (0x16 << 32) | 0xB374D848),
        ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
    ],
)
def test_parse_gives_the_64_bit_position(text: str, value: int) -> None:
    lsn = LSN.parse(text)
    assert isinstance(lsn, LSN)
    assert isinstance(lsn, int)
    assert lsn == value
    assert LSN(text) == value


@pytest.mark.parametrize("text", ["0/0", "0/1", "1/0", "16/B374D848", "FFFFFFFF/FFFFFFFF"])
def test_str_prints_as_postgresql_does(text: str) -> None:
    assert str(LSN(text)) == text
    assert repr(LSN(text)) == f"LSN('{text}')"


def test_parse_accepts_lower_case_leading_zeros_and_surrounding_space() -> None:
    assert LSN.parse("16/b374d848") == LSN.parse("16/B374D848")
    assert LSN.parse("00000016/0B374D84") == LSN.parse("16/B374D84")
    assert LSN.parse(" 1/0\n") == 2**32
    # Printing normalises: upper case, no leading zeros.
    assert str(LSN.parse("00000016/0b374d84")) == "16/B374D84"


@settings(max_examples=100)
@given(lsn_ints)
def test_str_and_parse_round_trip(value: int) -> None:
    lsn = LSN(value)
    assert LSN.parse(str(lsn)) == lsn == value


@settings(max_examples=100)
@given(lsn_ints, lsn_ints)
def test_order_is_the_integer_order(a: int, b: int) -> None:
    la, lb = LSN.parse(str(LSN(a))), LSN.parse(str(LSN(b)))
    assert (la < lb) == (a < b)
    assert (la == lb) == (a == b)


def test_order_across_the_32_bit_boundary() -> None:
    assert LSN("0/FFFFFFFF") < LSN("1/0")
    # The string trap across the boundary: "F/FFFFFFFF" sorts after "10/0" as text.
    assert "F/FFFFFFFF" > "10/0"
    assert LSN("F/FFFFFFFF") < LSN("10/0")
    assert LSN("10/0") - LSN("F/FFFFFFFF") == 1
    assert LSN("1/0") - LSN("0/FFFFFFFF") == 1
    assert max(LSN("1/0"), LSN("0/FFFFFFFF")) == LSN("1/0")


def test_order_ignores_the_string_traps() -> None:
    assert "0/9" > "0/10"
    assert LSN("0/9") < LSN("0/10")
    assert LSN("9/0") < LSN("10/0")
    assert LSN("0/A") > LSN("0/9")
    texts = ["1/0", "0/10", "0/9", "0/FFFFFFFF", "A/0", "9/FFFFFFFF", "0/0"]
    assert [str(x) for x in sorted(LSN(t) for t in texts)] == [
        "0/0",
        "0/9",
        "0/10",
        "0/FFFFFFFF",
        "1/0",
        "9/FFFFFFFF",
        "A/0",
    ]


def test_compares_with_plain_integers() -> None:
    assert LSN("0/10") == 16
    assert LSN("1/0") > 2**32 - 1
    assert LSN(5) <= LSN("0/5")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "0/",
        "/0",
        "0//0",
        "0/0/0",
        "G/0",
        "0/G",
        "0x1/0",
        "+1/0",
        "-1/0",
        "1 /0",
        "1/ 0",
        "123456789/0",
        "0/123456789",
        "16-B374D848",
        "16:B374D848",
    ],
)
def test_invalid_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not an LSN of the form 'X/Y'") as info:
        LSN.parse(text)
    assert repr(text) in str(info.value)
    with pytest.raises(ValueError, match="is not an LSN"):
        LSN(text)


@pytest.mark.parametrize("value", [-1, 2**64, 2**64 + 5, -(2**63)])
def test_integers_outside_64_bits_are_refused(value: int) -> None:
    with pytest.raises(ValueError, match=r"outside 0 \.\. 2\*\*64-1") as info:
        LSN(value)
    assert str(value) in str(info.value)


@pytest.mark.parametrize("value", [0, 1, 2**32, 2**64 - 1])
def test_integers_inside_the_range_are_accepted(value: int) -> None:
    assert LSN(value) == value


class _WithLSN(pydantic.BaseModel):
    lsn: LSNField
    maybe: LSNField | None = None


def test_pydantic_field_accepts_text_and_int_and_serialises_as_text() -> None:
    from_text = _WithLSN(lsn="16/B374D848")  # type: ignore[arg-type]
    from_int = _WithLSN(lsn=(0x16 << 32) | 0xB374D848)  # type: ignore[arg-type]
    assert from_text == from_int
    assert isinstance(from_text.lsn, LSN)
    assert isinstance(from_int.lsn, LSN)
    assert from_text.model_dump() == {"lsn": "16/B374D848", "maybe": None}
    text = from_text.model_dump_json()
    assert '"lsn":"16/B374D848"' in text
    back = _WithLSN.model_validate_json(text)
    assert back == from_text
    assert isinstance(back.lsn, LSN)


@pytest.mark.parametrize("bad", ["nope", "0/10/1", -1, 2**64, 1.5, None, [0, 1]])
def test_pydantic_field_refuses_what_is_not_an_lsn(bad: object) -> None:
    with pytest.raises(pydantic.ValidationError, match="LSN"):
        _WithLSN(lsn=bad)  # type: ignore[arg-type]
