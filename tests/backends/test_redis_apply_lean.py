"""``APPLY``'s lean path for calls that only buffer writes what its general path writes.

The lean path (``lua/apply_submit.lua``) runs calls whose groups only push,
write a new status and cache records; anything else falls back to the
general path before anything is written. Here the same calls go to the
library as it is and to a copy whose lean path is switched off, each on a
site of its own, and every key the two leave behind is compared: type,
value, members and scores, and whether and how long it lives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from services import forget_site, site_dump

from ccat_buffering.buffer.protocols import CacheKind, CacheWrite
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.models import TransactionStatus
from ccat_buffering_redis import scripts
from ccat_buffering_redis._frame import Command, frame
from ccat_buffering_redis._writes import RedisWriteBatch
from ccat_buffering_redis.keys import SiteKeys

_LEAN_CALL = "  local lean = apply_submits()\n"


def _general_only() -> tuple[str, str]:
    """The library with its lean path switched off, under names of its own."""
    library = scripts.LIBRARIES["apply"]
    assert library.code.count(_LEAN_CALL) == 1
    code = library.code.replace(_LEAN_CALL, "  local lean = nil\n")
    function = library.function + "_general"
    code = code.replace(library.function, function).replace(library.name, library.name + "_general")
    return code, function


@pytest.fixture
async def sites(redis_client: aioredis.Redis) -> AsyncIterator[dict[str, SiteKeys]]:
    code, general = _general_only()
    library = scripts.LIBRARIES["apply"]
    await redis_client.execute_command("FUNCTION", "LOAD", "REPLACE", library.code)
    await redis_client.execute_command("FUNCTION", "LOAD", "REPLACE", code)
    keys = {library.function: SiteKeys(new_site_name()), general: SiteKeys(new_site_name())}
    try:
        yield keys
    finally:
        await redis_client.execute_command("FUNCTION", "DELETE", library.name + "_general")
        for site in keys.values():
            await forget_site(redis_client, site.pattern())


def _submit(txid: str, writes: list[CacheWrite], state: str = "buffered") -> list[Command]:
    batch = RedisWriteBatch()
    batch.push(f"entry of {txid}")
    batch.put_status(TransactionStatus(transaction_id=txid, state=state), 60)
    if writes:
        batch.write_cache(txid, writes, 30 if txid.endswith("short") else 60)
    return batch.ops


def _w(model: str, record: str, kind: CacheKind, **fields: Any) -> CacheWrite:
    return CacheWrite(model, record, kind, fields)


CALLS: list[list[list[Command]]] = [
    [
        _submit(
            "t1",
            [_w("Obs", "r1", CacheKind.CREATE, name="a", n=1), _w("Pkg", "p1", CacheKind.CREATE)],
        )
    ],
    # An update of a buffered record (merged), a record written twice in one transaction.
    [
        _submit(
            "t2",
            [
                _w("Obs", "r1", CacheKind.UPDATE, n=2),
                _w("Obs", "r2", CacheKind.CREATE, name="b"),
                _w("Obs", "r2", CacheKind.UPDATE, n=3),
            ],
        )
    ],
    # Coalesced callers: two groups in one call; one transaction with a shorter TTL.
    [
        _submit("t3", [_w("Obs", "r3", CacheKind.CREATE, name="c")]),
        _submit(
            "t4short",
            [_w("Pkg", "p1", CacheKind.DELETE), _w("Fld", "f1", CacheKind.CREATE, name="x")],
        ),
    ],
    # buffer_many: several transactions in one group; one without records.
    [
        _submit("t5", [_w("Fld", "f2", CacheKind.CREATE, name="y")])
        + _submit("t6", [])
        + _submit("t7", [_w("Fld", "f1", CacheKind.UPDATE, name="z")])
    ],
    # buffer_many past the few transactions and models (8) that the lean path
    # finds by comparing: the rest through tables; its kept lists made anew.
    [
        [
            op
            for k in range(10)
            for op in _submit(f"m{k}", [_w(f"M{k}", f"x{k}", CacheKind.CREATE, name=str(k))])
        ]
    ],
    # Falls back (one transaction's two statuses, past those compared).
    [
        [op for k in range(9) for op in _submit(f"d{k}", [])]
        + _submit("d3", [_w("Obs", "r4", CacheKind.CREATE, name="d")])
    ],
    # A transaction of many records, some written twice (past the 16 that
    # the lean path compares one by one to list them once).
    [
        _submit(
            "t8",
            [_w("Obs", f"m{i}", CacheKind.CREATE, name=str(i)) for i in range(20)]
            + [_w("Obs", f"m{i}", CacheKind.UPDATE, n=i) for i in (3, 17, 19)],
        )
    ],
    # Falls back (a status already stored): both paths are the general one.
    [_submit("t1", [_w("Obs", "r9", CacheKind.CREATE, name="q")], state="retrying")],
]


# The calls above that the general path runs (a transaction's second status,
# a status already stored); the lean path runs every other.
FALLS_BACK = {len(CALLS) - 3, len(CALLS) - 1}


async def test_the_lean_path_runs_the_calls_that_only_buffer(
    redis_client: aioredis.Redis, sites: dict[str, SiteKeys]
) -> None:
    """Each call runs where it should: a library whose general path fails tells."""
    library = scripts.LIBRARIES["apply"]
    marker = "  if lean then return lean end\n"
    assert library.code.count(marker) == 1
    code = library.code.replace(marker, marker + "  error('the general path ran')\n")
    function = library.function + "_lean"
    code = code.replace(library.function, function).replace(library.name, library.name + "_lean")
    await redis_client.execute_command("FUNCTION", "LOAD", "REPLACE", code)
    keys = next(iter(sites.values()))
    try:
        for i, groups in enumerate(CALLS):
            call = redis_client.fcall(function, 1, keys.buffer, keys.prefix, *frame(groups))
            if i in FALLS_BACK:
                with pytest.raises(redis.exceptions.ResponseError, match="general path ran"):
                    await call
            else:
                assert all(isinstance(r, int) for r in await call), i
    finally:
        await redis_client.execute_command("FUNCTION", "DELETE", library.name + "_lean")


async def _dump(client: aioredis.Redis, keys: SiteKeys) -> dict[str, Any]:
    return await site_dump(client, keys.prefix, keys.pattern())


def _close(lean: int, general: int) -> bool:
    """The same TTL: none for both, or both set and a few seconds apart at most."""
    return lean == general or (lean > 0 and general > 0 and abs(lean - general) < 5000)


@pytest.mark.parametrize(
    ("counter", "listed"),
    [(None, None), (999_990, None), (1_000_055, None), (None, 7)],
    ids=["new-site", "past-a-million", "next-bucket", "later-bucket-listed"],
)
async def test_the_lean_path_writes_what_the_general_path_writes(
    redis_client: aioredis.Redis,
    sites: dict[str, SiteKeys],
    counter: int | None,
    listed: int | None,
) -> None:
    # Past a million, sequence numbers cross the thousands that decimal()
    # keeps (numbers.lua); then a bucket boundary (128), within the calls.
    # The lean path lists a status's bucket unless its state's list ends
    # with it: a list that ends with another bucket still gets it.
    for keys in sites.values():
        if counter is not None:
            await redis_client.set(keys.seq, counter)
        if listed is not None:
            await redis_client.zadd(keys.state("buffered"), {str(listed): listed})
    # A field index on one model: the writes must move its entries the same way.
    for keys in sites.values():
        await redis_client.zadd(keys.prefix + "fields:Fld", {"\x00name": 0})
        await redis_client.expire(keys.prefix + "fields:Fld", 60)
    replies: dict[str, list[Any]] = {function: [] for function in sites}
    for groups in CALLS:
        for function, keys in sites.items():
            args = [keys.prefix, *frame(groups)]
            replies[function].append(await redis_client.fcall(function, 1, keys.buffer, *args))
    lean, general = [await _dump(redis_client, keys) for keys in sites.values()]
    assert len(set(map(repr, replies.values()))) == 1, replies
    assert {k: v[:2] for k, v in lean.items()} == {k: v[:2] for k, v in general.items()}
    assert all(_close(lean[k][2], general[k][2]) for k in lean), (lean, general)
    assert "index:Fld" in lean and "transaction:t7" in lean  # it wrote what it should


# Every number around decimal()'s boundaries whose text differs from Lua's.
_DECIMAL_CHECK = """
local bad = {}
for _, base in ipairs({0, 1000, 999000, 1000000, 123456789, 999999999000, 2 ^ 40}) do
  for n = math.max(base - 1100, 0), base + 1100 do
    if decimal(n) ~= tostring(n) then bad[#bad + 1] = tostring(n) .. '=' .. decimal(n) end
  end
end
for k = 1, 300 do  -- more thousands than it keeps at once
  local n = k * 1000 + 7
  if decimal(n) ~= tostring(n) or decimal(n + 1) ~= tostring(n + 1) then bad[#bad + 1] = n end
end
for _, n in ipairs({128, 1023, 99999, 100000, 1048575, 4503599627370495}) do
  if decimal(n) ~= string.format('%d', n) then bad[#bad + 1] = string.format('%d', n) end
end
return bad
"""


async def test_decimal_text_is_luas_own(redis_client: aioredis.Redis) -> None:
    """``decimal()`` (numbers.lua) gives the text Lua gives, around every boundary it has."""
    lua = scripts._fragment("numbers") + _DECIMAL_CHECK
    assert await redis_client.eval(lua, 0) == []


@pytest.mark.parametrize(
    ("suffix", "kind"),
    [
        ("transaction_buffer", "string"),
        ("state:buffered", "set"),
        ("state:buffered", "hash"),
        ("index:Obs", "set"),
        ("fields:Obs", "list"),
    ],
)
async def test_a_key_of_another_type_is_refused_alike(
    redis_client: aioredis.Redis, sites: dict[str, SiteKeys], suffix: str, kind: str
) -> None:
    """The lean path's checks refuse what the general path's refuse, and nothing is written."""
    for keys in sites.values():
        key = keys.prefix + suffix
        if kind == "string":
            await redis_client.set(key, "x")
        elif kind == "set":
            await redis_client.sadd(key, "x")
        elif kind == "hash":
            await redis_client.hset(key, "x", "y")
        else:
            await redis_client.rpush(key, "x")
    groups = [_submit("t1", [_w("Obs", "r1", CacheKind.CREATE, name="a")])]
    replies = []
    for function, keys in sites.items():
        got = await redis_client.fcall(function, 1, keys.buffer, keys.prefix, *frame(groups))
        replies.append([r.decode().replace(keys.prefix, "") for r in got])
    assert replies[0] == replies[1] and str(replies[0][0]).startswith("error: "), replies
    lean, general = [await _dump(redis_client, keys) for keys in sites.values()]
    assert lean == general and len(lean) == 1, lean


async def test_a_record_key_of_another_type_is_replaced_alike(
    redis_client: aioredis.Redis, sites: dict[str, SiteKeys]
) -> None:
    """A record's key of another type (written by hand) is replaced, as the general path does."""
    for keys in sites.values():
        await redis_client.hset(keys.prefix + "buffered:Obs:r1", "x", "y")
    groups = [_submit("t1", [_w("Obs", "r1", CacheKind.CREATE, name="a")])]
    replies = [
        await redis_client.fcall(function, 1, keys.buffer, keys.prefix, *frame(groups))
        for function, keys in sites.items()
    ]
    assert replies[0] == replies[1] == [1], replies
    lean, general = [await _dump(redis_client, keys) for keys in sites.values()]
    assert {k: v[:2] for k, v in lean.items()} == {k: v[:2] for k, v in general.items()}
    assert lean["buffered:Obs:r1"][0] == "string", lean


# Every text whose number() differs from tonumber() (nan is itself, though
# unequal), read twice (the second time from what number() keeps), past the
# 256 texts it keeps.
_NUMBER_CHECK = """
local texts = {'0', '1', '20', '3600000', '', 'x', '1e3', ' 5', '0x10', '-1', '1.5', 'nan'}
for i = 1, 400 do texts[#texts + 1] = tostring(i * 7) end
local bad = {}
for _ = 1, 2 do
  for _, text in ipairs(texts) do
    local got, want = number(text), tonumber(text)
    if got ~= want and not (got ~= got and want ~= want) then bad[#bad + 1] = text end
  end
end
return bad
"""


async def test_number_reads_a_token_as_tonumber_does(redis_client: aioredis.Redis) -> None:
    """``number()`` (numbers.lua) gives what ``tonumber()`` gives, kept or not."""
    lua = scripts._fragment("numbers") + _NUMBER_CHECK
    assert await redis_client.eval(lua, 0) == []
