"""Run a page's Python blocks in order, as a reader would paste them.

Used by ``tests/docs/test_docs.py`` in a fresh interpreter per page, in an empty
working directory: ``python docrun.py < blocks.json``. The blocks share one
namespace, and top-level ``await`` works as in ``python -m asyncio``. The
namespace starts with what the pages' fragments assume a reader has: ``site``
(a secondary site on the memory backend and a SQLite main database with the
example schema and the ledger), ``coordinator`` (the same), ``engine``,
``registry``, the example's models, ``tx`` (a builder with one step), ``now``,
``obs_id`` and ``old_package_id``. A block that calls ``asyncio.run()``
itself runs outside that loop, as it would in a script. A ``>>>`` block is a
doctest. Prints ``ok <n>`` per block; a failure prints its traceback and
exits 1.
"""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import doctest
import inspect
import json
import sys
import traceback
from typing import Any


async def _prelude() -> dict[str, Any]:
    from ccat_buffering import (
        BufferingCoordinator,
        BufferingSettings,
        ModelRegistry,
        TransactionBuilder,
        TransactionExecutor,
        open_backend,
    )
    from ccat_buffering.demo.example import Base, ExecutedObsUnit, RawDataFile, RawDataPackage
    from ccat_buffering.drain.database import create_engine
    from ccat_buffering_memory import MemoryBackend

    settings = BufferingSettings(
        site_name="docs", database_url="sqlite+aiosqlite:///docs-main.db", backend_url="memory://"
    )
    engine = create_engine(settings.require_url("database_url"))
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    registry = ModelRegistry.from_base(Base)
    await TransactionExecutor(engine, registry).create_ledger()
    site = BufferingCoordinator(
        settings, MemoryBackend("docs"), engine, registry, owns=True, start=False
    )
    extra: dict[str, Any] = {}
    try:
        from ccat_buffering_redis import RedisBackend

        # What the skipped Sentinel block of redis.rst imports for the blocks after it.
        extra["RedisBackend"] = RedisBackend
        extra["open_backend"] = open_backend
    except ImportError:
        pass
    now = dt.datetime.now(dt.UTC)
    tx = TransactionBuilder("start_observation")
    obs = tx.create(ExecutedObsUnit, {"obs_unit_id": 1, "status": "running", "start_time": now})
    return {
        "asyncio": asyncio,
        "site": site,
        "coordinator": site,
        "engine": engine,
        "registry": registry,
        "Base": Base,
        "BufferingCoordinator": BufferingCoordinator,
        "ModelRegistry": ModelRegistry,
        "TransactionBuilder": TransactionBuilder,
        "TransactionExecutor": TransactionExecutor,
        "ExecutedObsUnit": ExecutedObsUnit,
        "RawDataPackage": RawDataPackage,
        "RawDataFile": RawDataFile,
        "tx": tx,
        "now": now,
        "obs_id": obs.id,
        "old_package_id": "00000000-0000-0000-0000-000000000000",
        **extra,
    }


def main() -> int:
    """Run the blocks on standard input; 0 when every one ran."""
    blocks: list[str] = json.load(sys.stdin)
    loop = asyncio.new_event_loop()
    namespace = loop.run_until_complete(_prelude())
    for index, code in enumerate(blocks):
        try:
            if code.lstrip().startswith(">>>"):
                test = doctest.DocTestParser().get_doctest(
                    code, namespace, f"block {index}", None, 0
                )
                runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
                if runner.run(test).failed:
                    return 1
            else:
                compiled = compile(code, f"<block {index}>", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                result = eval(compiled, namespace)
                if inspect.iscoroutine(result):
                    loop.run_until_complete(result)
        except Exception:
            print(f"block {index} failed:\n{code}", file=sys.stderr)
            traceback.print_exc()
            return 1
        print(f"ok {index}", flush=True)
    loop.run_until_complete(namespace["site"].aclose())
    loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
