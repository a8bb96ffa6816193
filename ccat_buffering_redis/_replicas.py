"""Acknowledged means replicated: the buffering script and ``WAIT`` in one round trip.

With ``min_replicas`` set, a call that buffers is sent as a pipeline of two
commands on one connection: the ``apply`` script, then ``WAIT <replicas>
<timeout ms>``. ``WAIT`` blocks that connection until the replicas have
acknowledged every write it sent so far (so the script's), or the timeout
passes, and answers how many did. ``WAIT`` counts the writes of its own
connection only: sent on another connection it would answer for nothing,
which is why both commands share one pipeline (on a Cluster, one connection
to the slot's primary).

``WAITAOF`` (Redis 7.2+) would also wait for the replicas' fsync; it is not
used: the servers this library is tested on (Redis 7.0) do not have it, and a
replica in memory already survives what the issue asks (its master's loss).

A master demoted by Sentinel answers the script with ``READONLY``; redis-py's
Sentinel-managed connection then drops the connection and the next call asks
the sentinels for the new master. A master that does not know yet that it was
demoted (both nodes masters for a moment) takes the write, but no replica
acknowledges it: the caller gets :class:`~ccat_buffering.errors.WriteNotReplicatedError`,
never an acknowledgement.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.cluster import PipelineCommand, RedisCluster

from ccat_buffering.errors import ConfigurationError

__all__ = [
    "acknowledged_offset",
    "apply_and_wait",
    "check_replicas",
    "not_replicated_message",
    "on_one_connection",
    "replicas_from_url",
]


def acknowledged_offset(info: dict[str, Any], replicas: int) -> int:
    """The replication offset that counts as acknowledged, from ``INFO replication``.

    The master's own offset when ``replicas`` is 0; otherwise the offset
    that at least ``replicas`` online replicas have acknowledged (0 if fewer
    are connected).
    """
    own = int(info.get("master_repl_offset", 0))
    if replicas <= 0:
        return own
    offsets = sorted(
        (
            int(value.get("offset", 0))
            for name, value in info.items()
            if name.startswith("slave") and isinstance(value, dict)
            if value.get("state") == "online"
        ),
        reverse=True,
    )
    return min(own, offsets[replicas - 1]) if len(offsets) >= replicas else 0


def check_replicas(replicas: int, timeout: float) -> tuple[int, float]:
    """``min_replicas`` and its timeout, checked.

    Raises:
        ConfigurationError: A negative count, or a timeout not above 0.
    """
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ConfigurationError(f"min_replicas={replicas!r}: use a whole number, 0 or more")
    if not timeout > 0:
        raise ConfigurationError(f"min_replicas_timeout={timeout!r}: use seconds above 0")
    return replicas, float(timeout)


def replicas_from_url(
    replicas: str | None, timeout: str | None, default: int, default_timeout: float
) -> tuple[int, float]:
    """The URL's ``min_replicas``/``min_replicas_timeout`` parameters, over the defaults.

    Raises:
        ConfigurationError: A parameter is not a number.
    """
    try:
        count = default if replicas is None else int(replicas)
    except ValueError:
        raise ConfigurationError(
            f"min_replicas={replicas!r} in the backend URL: use a whole number, 0 or more"
        ) from None
    try:
        seconds = default_timeout if timeout is None else float(timeout)
    except ValueError:
        raise ConfigurationError(
            f"min_replicas_timeout={timeout!r} in the backend URL: use seconds above 0"
        ) from None
    return check_replicas(count, seconds)


def not_replicated_message(where: str, wanted: int, got: int, timeout: float) -> str:
    """The error's text: what happened, what it means for the write, what to do."""
    return (
        f"{where}: only {got} of the {wanted} replica(s) asked for (min_replicas) acknowledged "
        f"the write within {timeout:g} s. The write may or may not be buffered (a failover "
        "may drop it, or it may be drained as usual): it is not acknowledged. Submitting "
        "the same transaction object again is safe: the ledger applies it once"
    )


async def apply_and_wait(
    client: Redis | RedisCluster,
    script: Any,
    keys: list[str],
    args: list[Any],
    replicas: int,
    timeout: float,
) -> tuple[Any, int]:
    """Run ``script`` and ``WAIT`` on one connection, in one round trip.

    Args:
        client: The backend's client.
        script: A registered ``AsyncScript``.
        keys: The script's keys (the first routes a Cluster call).
        args: The script's arguments.
        replicas: How many replicas must acknowledge.
        timeout: Seconds ``WAIT`` may block.

    Returns:
        The script's reply and how many replicas acknowledged it.

    Raises:
        redis.exceptions.RedisError: As the script or ``WAIT`` raised it.
    """
    millis = max(1, round(timeout * 1000))
    if isinstance(client, RedisCluster):
        return await _on_cluster(client, script, keys, args, replicas, millis)
    async with client.pipeline(transaction=False) as pipe:
        await script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", replicas, millis)
        reply, count = await pipe.execute()
    return reply, int(count)


async def _on_cluster(
    client: RedisCluster, script: Any, keys: list[str], args: list[Any], replicas: int, millis: int
) -> tuple[Any, int]:
    # The cluster pipeline routes a command without keys (WAIT) to any node;
    # one pipeline on the slot owner's own connection keeps both together.
    for attempt in range(2):
        try:
            reply, count = await on_slot_owner(
                client,
                keys[0],
                [("EVALSHA", script.sha, len(keys), *keys, *args), ("WAIT", replicas, millis)],
            )
        except redis.exceptions.NoScriptError:
            if attempt:
                raise
            await client.script_load(script.script)  # every primary: the slot may move
            continue
        return reply, int(count)
    raise redis.exceptions.NoScriptError("the script could not be loaded")


async def on_one_connection(
    client: Redis | RedisCluster, key: str, commands: list[tuple[Any, ...]]
) -> list[Any]:
    """Send ``commands`` on one connection to the master that holds ``key``; their replies.

    Raises:
        redis.exceptions.RedisError: The first error a command got.
    """
    if isinstance(client, RedisCluster):
        return await on_slot_owner(client, key, commands)
    async with client.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute())


async def on_slot_owner(
    client: RedisCluster, key: str, commands: list[tuple[Any, ...]]
) -> list[Any]:
    """Send ``commands`` in one pipeline on a connection to the owner of ``key``'s slot.

    Raises:
        redis.exceptions.RedisError: The first error a command got; after a
            connection error or a moved slot the slots are learned again.
    """
    if client._initialize:  # first use: learn the slots
        await client.initialize()
    node = client.get_node_from_key(key)
    if node is None:
        raise redis.exceptions.ConnectionError(f"no node owns the slot of {key}")
    pipeline = [PipelineCommand(i, *command) for i, command in enumerate(commands)]
    try:
        await node.execute_pipeline(pipeline)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        # The slot's owner may have changed: learn the slots again for the next call.
        await _relearn(client)
        raise
    for command in pipeline:
        if isinstance(command.result, redis.exceptions.MovedError | redis.exceptions.AskError):
            await _relearn(client)
            raise redis.exceptions.ConnectionError(f"the slot moved ({command.result}): try again")
        if isinstance(command.result, Exception):
            raise command.result
    return [command.result for command in pipeline]


async def _relearn(client: RedisCluster) -> None:
    # No node may answer now; the next call tries again.
    with contextlib.suppress(redis.exceptions.RedisError, OSError):
        await client.nodes_manager.initialize()
