"""A release of many transactions at once writes what one release per record did.

``APPLY``'s ``release`` reads a batch's statuses, records and ID-cache keys
with one MGET per slice and removes keys and index entries in batches (see
``release_all`` in ``lua/apply_writes.lua``). Here the same calls go to the
library as it is and to a copy that releases as the library did before, a
transaction and a record at a time (``_PER_RECORD``, the earlier code, kept
verbatim), each on a site of its own, and every key the two leave behind is
compared: type, value, members and scores, and whether and how long it lives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from services import forget_site, site_dump

from ccat_buffering.buffer.protocols import CacheKind, CacheWrite
from ccat_buffering.testing import new_site_name
from ccat_buffering.write.models import TransactionStatus
from ccat_buffering_redis import scripts
from ccat_buffering_redis._frame import Command, frame
from ccat_buffering_redis._writes import RedisWriteBatch
from ccat_buffering_redis.keys import SiteKeys

_PER_RECORD = """
-- The records a transaction wrote: those stored with its status, and those
-- staged in this call.
local function written_by(txid)
  local found = {}
  if not CLEARED[txid] then
    local _, stored = split_status(read(STATUS .. txid))
    for m in string.gmatch(stored, '%S+') do found[#found + 1] = m end
  end
  local add = WRITTEN_ADD[txid]
  if add then for _, m in ipairs(add.list) do found[#found + 1] = m end end
  for _, w in ipairs(G.written) do
    if w[1] == txid then for _, m in ipairs(w[2]) do found[#found + 1] = m end end
  end
  return found
end

local function release(txid)
  for _, e in ipairs(G.index) do add_index(e[1], e[2], e[3], e[4]) end
  G.index = {}
  flush_indexes()
  local deleted, seen = 0, {}
  local members = written_by(txid)
  WRITTEN_ADD[txid] = nil
  local kept = {}
  for _, w in ipairs(G.written) do if w[1] ~= txid then kept[#kept + 1] = w end end
  G.written = kept
  CLEARED[txid] = true
  for _, member in ipairs(members) do
    if not seen[member] then
      seen[member] = true
      local k = BUFFERED .. member
      local value = read(k)
      if value then
        local created, was_deleted, seq, txs, fields = split_record(value)
        local rest = without_tx(txs, txid)
        -- The implicit creator leaves: the record has none any more.
        if created == '2' and string.match(txs, '^[^,]*') == txid then created = '1' end
        if rest == '' then
          local sep = string.find(member, ':', 1, true)
          local model, id = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
          redis.call('DEL', k)
          unindex(model, id, tonumber(seq))
          reindex_fields(model, id, fields, '')
          deleted = deleted + 1
        elseif rest ~= txs then
          redis.call('SET', k, join_record(created, was_deleted, seq, rest, fields), 'KEEPTTL')
        end
      end
      local idk = IDS .. member
      local entry = read(idk)
      if entry and creator(entry, value) == txid then redis.call('DEL', idk) end
    end
  end
  return deleted
end
"""

_BATCHED = "      count = count + release_all(txids)\n"
_ONE_BY_ONE = "      for _, t in ipairs(txids) do count = count + release(t) end\n"
_BEFORE = "-- The release of a batch of transactions"


def _per_record() -> tuple[str, str]:
    """The library releasing a record at a time, under names of its own."""
    library = scripts.LIBRARIES["apply"]
    assert library.code.count(_BATCHED) == 1 and library.code.count(_BEFORE) == 1
    code = library.code.replace(_BATCHED, _ONE_BY_ONE)
    code = code.replace(_BEFORE, _PER_RECORD + _BEFORE)
    function = library.function + "_per_record"
    code = code.replace(library.function, function).replace(library.name, library.name + "_pr")
    return code, function


@pytest.fixture
async def sites(redis_client: aioredis.Redis) -> AsyncIterator[dict[str, SiteKeys]]:
    code, per_record = _per_record()
    library = scripts.LIBRARIES["apply"]
    await redis_client.execute_command("FUNCTION", "LOAD", "REPLACE", library.code)
    await redis_client.execute_command("FUNCTION", "LOAD", "REPLACE", code)
    keys = {library.function: SiteKeys(new_site_name()), per_record: SiteKeys(new_site_name())}
    try:
        yield keys
    finally:
        await redis_client.execute_command("FUNCTION", "DELETE", library.name + "_pr")
        for site in keys.values():
            await forget_site(redis_client, site.pattern())


def _w(model: str, record: str, kind: CacheKind, **fields: Any) -> CacheWrite:
    return CacheWrite(model, record, kind, fields)


def _submit(txid: str, writes: list[CacheWrite], ttl: int = 60) -> list[Command]:
    batch = RedisWriteBatch()
    batch.push(f"entry of {txid}")
    batch.put_status(TransactionStatus(transaction_id=txid, state="buffered"), 60)
    if writes:
        batch.write_cache(txid, writes, ttl)
    return batch.ops


def _release(txids: list[str], *, replicated: bool = False) -> list[Command]:
    batch = RedisWriteBatch()
    if replicated:
        batch.put_statuses(
            [TransactionStatus(transaction_id=t, state="replicated") for t in txids], 60
        )
    batch.release_cache(txids)
    return batch.ops


CALLS: list[list[list[Command]]] = [
    [
        _submit(
            "t1",
            [_w("Obs", "r1", CacheKind.CREATE, name="a", n=1), _w("Pkg", "p1", CacheKind.CREATE)],
        )
    ],
    # An update of a buffered record, a record written twice in one transaction.
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
    [
        _submit("t3", [_w("Obs", "r3", CacheKind.CREATE, name="c")]),
        _submit(
            "t4",
            [_w("Pkg", "p1", CacheKind.DELETE), _w("Fld", "f1", CacheKind.CREATE, name="x")],
            30,
        ),
    ],
    [
        _submit("t5", [_w("Fld", "f2", CacheKind.CREATE, name="y")])
        + _submit("t6", [])
        + _submit("t7", [_w("Fld", "f1", CacheKind.UPDATE, name="z")])
    ],
    # A create of a record another transaction buffered: its creator is named
    # in the ID cache.
    [
        _submit(
            "t8",
            [
                _w("Obs", "r1", CacheKind.CREATE, name="again"),
                _w("Fld", "f3", CacheKind.CREATE, name="w"),
            ],
        )
    ],
    [
        _submit(
            "t10", [_w("Fld", "f4", CacheKind.CREATE, name="v"), _w("Obs", "r5", CacheKind.CREATE)]
        )
    ],
    # Records shared within the batch (r1: t1, t2, t8; p1: t1, t4), one released
    # with its status, one unknown.
    [_release(["t1", "t3", "t2", "t-unknown"], replicated=True)],
    # A release in the call that writes the records; one group that only releases.
    [
        _submit("t9", [_w("Obs", "r4", CacheKind.CREATE, name="d")]) + _release(["t9"]),
        _release(["t4"]),
    ],
    # The rest but t10, one of them twice; the key of another type is left as it is.
    [_release(["t5", "t7", "t6", "t8", "t8"], replicated=True)],
]


def _untimed(dump: dict[str, Any]) -> dict[str, Any]:
    """Types and values; the index of replicated statuses, scored by expiry, by members."""
    out = {k: v[:2] for k, v in dump.items()}
    if "state:replicated" in out:
        out["state:replicated"] = [m for m, _ in out["state:replicated"][1]]
    return out


def _close(a: int, b: int) -> bool:
    """The same TTL: none for both, or both set and a few seconds apart at most."""
    return a == b or (a > 0 and b > 0 and abs(a - b) < 5000)


async def test_a_batched_release_writes_what_a_release_per_record_writes(
    redis_client: aioredis.Redis, sites: dict[str, SiteKeys]
) -> None:
    replies: dict[str, list[Any]] = {function: [] for function in sites}
    dumps: dict[str, list[dict[str, Any]]] = {function: [] for function in sites}
    for at, groups in enumerate(CALLS):
        for function, keys in sites.items():
            if at == 0:
                # A field index on one model, and an ID-cache key of another type.
                await redis_client.zadd(keys.prefix + "fields:Fld", {"\x00name": 0})
                await redis_client.expire(keys.prefix + "fields:Fld", 60)
                await redis_client.hset(keys.prefix + "cache:ids:Obs:r3", "by", "hand")
            args = [keys.prefix, *frame(groups)]
            replies[function].append(await redis_client.fcall(function, 1, keys.buffer, *args))
            dumps[function].append(await site_dump(redis_client, keys.prefix, keys.pattern()))
    assert len(set(map(repr, replies.values()))) == 1, replies
    for batched, per_record in zip(*dumps.values(), strict=True):
        assert _untimed(batched) == _untimed(per_record)
        assert all(_close(batched[k][2], per_record[k][2]) for k in batched)
    # What is left is what it should be: t10's records alone, indexed, and the hand-written key.
    final = dumps[next(iter(sites))][-1]
    assert sorted(k for k in final if k.startswith(("buffered:", "cache:ids:"))) == [
        "buffered:Fld:f4",
        "buffered:Obs:r5",
        "cache:ids:Obs:r3",
    ]
    assert [m for m, _ in final["index:Obs:0"][1]] == [b"r5"]
    assert [m for m, _ in final["index:Fld:0"][1]] == [b"f4"]
    assert final["fields:Fld"][1] == [(b"\x00name", 0.0), (b'name="v"\x00f4', 0.0)]
    # Records deleted: r2, r3 | r4 (and a push) | p1 | f1, f2, f3, r1.
    assert replies[next(iter(sites))][6:] == [[2], [2, 1], [4]]


_REMOVE_ALL = "    state_remove_all(state, list)\n"
_REMOVE_EACH = "    for j = 1, #list, 2 do state_remove(state, list[j], list[j + 1]) end\n"
# The per-status removal the batched one replaced, kept here word for word.
_STATE_REMOVE = """local function state_remove(state, seq, id)
  if seq >= 0 then bucket_drop(state, math.floor(seq / BUCKET), id) end
end

"""
_BEFORE_REMOVE_ALL = "-- Take the (sequence number, id) pairs out of a state's buckets"


@pytest.fixture
async def status_sites(redis_client: aioredis.Redis) -> AsyncIterator[dict[str, SiteKeys]]:
    library = scripts.LIBRARIES["apply"]
    assert library.code.count(_REMOVE_ALL) == 1 and library.code.count(_BEFORE_REMOVE_ALL) == 1
    code = library.code.replace(_REMOVE_ALL, _REMOVE_EACH)
    code = code.replace(_BEFORE_REMOVE_ALL, _STATE_REMOVE + _BEFORE_REMOVE_ALL)
    each = library.function + "_each"
    code = code.replace(library.function, each).replace(library.name, library.name + "_each")
    await redis_client.execute_command("FUNCTION", "LOAD", "REPLACE", library.code)
    await redis_client.execute_command("FUNCTION", "LOAD", "REPLACE", code)
    keys = {library.function: SiteKeys(new_site_name()), each: SiteKeys(new_site_name())}
    try:
        yield keys
    finally:
        await redis_client.execute_command("FUNCTION", "DELETE", library.name + "_each")
        for site in keys.values():
            await forget_site(redis_client, site.pattern())


def _moves(txids: list[str], state: str) -> list[Command]:
    batch = RedisWriteBatch()
    batch.put_statuses([TransactionStatus(transaction_id=t, state=state) for t in txids], 60)
    return batch.ops


async def test_statuses_leave_their_buckets_as_they_did_one_at_a_time(
    redis_client: aioredis.Redis, status_sites: dict[str, SiteKeys]
) -> None:
    # 300 statuses over three buckets of the state indexes (128 numbers each);
    # the moves empty some buckets and leave others part full.
    txids = [f"tx-{i:03d}" for i in range(300)]
    calls = [
        [[op for t in txids for op in _submit(t, [])]],
        [_moves(txids[:200], "processing")],
        [_moves(txids[:60], "committed"), _moves(txids[250:], "processing")],
        [_moves(txids[60:170], "committed")],
        [_moves(txids[:170], "replicated")],
    ]
    dumps: dict[str, list[dict[str, Any]]] = {function: [] for function in status_sites}
    for groups in calls:
        for function, keys in status_sites.items():
            args = [keys.prefix, *frame(groups)]
            await redis_client.fcall(function, 1, keys.buffer, *args)
            dumps[function].append(await site_dump(redis_client, keys.prefix, keys.pattern()))
    for all_at_once, each in zip(*dumps.values(), strict=True):
        assert _untimed(all_at_once) == _untimed(each)
    final = dumps[next(iter(status_sites))][-1]
    assert "state:committed" not in final and "state:processing:0" not in final
    assert [int(b) for b, _ in final["state:buffered"][1]] == [1]  # tx-200 to tx-249
    # Processing took numbers 301-550: bucket 2 emptied, 3 and 4 part full.
    assert [int(b) for b, _ in final["state:processing"][1]] == [3, 4]
    assert len(final["state:processing:3"][1]) == 30 + 11  # tx-170 to 199, tx-250 to 260
