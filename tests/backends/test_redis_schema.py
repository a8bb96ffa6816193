"""One source for the Redis key schema and the Lua: ``keys.SUFFIXES``, checked against the rest."""

from __future__ import annotations

import re
import warnings
from importlib import resources

import pytest

import ccat_buffering_redis.keys
from ccat_buffering_redis import scripts
from ccat_buffering_redis.keys import SUFFIXES

LUA = resources.files("ccat_buffering_redis") / "lua"


def _lua_files() -> dict[str, str]:
    return {
        p.name.removesuffix(".lua"): p.read_text(encoding="utf-8")
        for p in LUA.iterdir()
        if p.name.endswith(".lua")
    }


def test_the_keys_docstring_table_names_every_suffix_and_no_other() -> None:
    doc = ccat_buffering_redis.keys.__doc__ or ""
    named = {m.split("<", 1)[0] for m in re.findall(r"^``([^`]+)``", doc, re.MULTILINE)}
    assert named == set(SUFFIXES.values())


def test_every_suffix_has_its_lua_name_in_the_generated_fragment() -> None:
    fragment = scripts.keys_fragment()
    for role, suffix in SUFFIXES.items():
        assert f"local {scripts.LUA_NAMES[role]} = P .. '{suffix}'\n" in fragment
    assert set(scripts.LUA_NAMES) == set(SUFFIXES)


def test_no_lua_file_writes_a_key_name_by_hand() -> None:
    for name, text in _lua_files().items():
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
        assert "P .. '" not in code and "ARGV[1] .." not in code, name
        for suffix in SUFFIXES.values():
            assert f"'{suffix}" not in code, (name, suffix)


def test_every_script_is_a_file_headed_by_its_contract() -> None:
    files = _lua_files()
    assert set(scripts.NAMES) <= files.keys()
    for name in scripts.NAMES:
        head = files[name].split("\n\n-- include:", 1)[0]
        assert head.startswith(f"-- {name.upper()}: "), name
        assert "KEYS[1]" in head and "ARGV[1]" in head and "Returns:" in head, name


def test_includes_name_fragments_that_exist_and_each_is_included_once() -> None:
    files = _lua_files()
    for name in scripts.NAMES:
        for fragment in re.findall(r"^-- include: (\w+)$", files[name], re.MULTILINE):
            assert fragment == "keys" or fragment in files, (name, fragment)
        text = scripts.SCRIPTS[name]
        assert "-- include:" not in text
        assert text.count("local function now_ms()") == 1, name


def test_the_stores_still_import_from_backend() -> None:
    import ccat_buffering_redis.backend as backend
    import ccat_buffering_redis.stores as stores

    assert backend.RedisWriteBatch is stores.RedisWriteBatch
    assert backend.RedisCacheStore is stores.RedisCacheStore


def test_an_unknown_backend_name_is_an_attribute_error() -> None:
    import ccat_buffering_redis.backend as backend

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            backend.nothing_here  # noqa: B018
