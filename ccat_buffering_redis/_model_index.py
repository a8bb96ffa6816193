"""The model index (``index:<Model>``): its Lua is ``lua/model_index.lua``.

A model's record ids live in buckets of :data:`BUCKET` consecutive sequence
numbers, ``index:<Model>:<bucket>``, each a zset of ids scored by their
number's place in the bucket (0 to ``BUCKET - 1``). A bucket never holds more
than ``BUCKET`` ids and an id is a short text, so Redis keeps each bucket as
a listpack (``zset-max-listpack-entries`` is 128 by default): about 40 bytes an
id, where one large zset (a skiplist) took about 145. ``index:<Model>`` lists
the model's buckets by number. A record's number is in its head line (see
``lua/records.lua`` and :mod:`ccat_buffering_redis._values`), so that a release finds
its bucket without a lookup, and the order first written is the numbers' order.
"""

from __future__ import annotations

__all__ = ["BUCKET"]

BUCKET = 128
"""Sequence numbers per bucket: at most Redis's default ``zset-max-listpack-entries``."""
