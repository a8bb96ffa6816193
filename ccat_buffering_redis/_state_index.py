"""The state indexes (``state:<state>``): its Lua is ``lua/state_index.lua``.

The unfinished states that are ordered by arrival (``buffered``,
``processing``, ``retrying``) keep their transaction ids in buckets of
:data:`~ccat_buffering_redis._model_index.BUCKET` consecutive sequence
numbers, ``state:<state>:<bucket>``, as the model index does, so that Redis
keeps each as a listpack; ``state:<state>`` lists the buckets by number. Such
a status's value starts with its number (``<number>{...json...}``), so that a
status leaving the state finds its bucket. ``committed`` (ordered by LSN) and
the terminal states (ordered by expiry) stay one zset each: their order is not
by sequence number, and terminal entries are pruned by score.
"""
