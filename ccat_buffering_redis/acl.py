"""The Redis ACL each role of a site needs: the one source for the docs and the tests.

Three users per site, each limited to the site's keys (``~site:{<site>}:*``,
one Cluster slot) and to the commands its role sends, directly or from the
library's scripts (a script runs with its caller's rights):

* ``service`` buffers, reads its writes back, serves health and records audit
  entries; it cannot claim, recover or replay (no ``RPOP``, ``RPUSH``, ``HKEYS``);
* ``worker`` drains (claim, ack, retry, dead-letter, recover, lease, report)
  and runs the operator's fixes (``dlq replay``/``purge``, audit);
* ``status`` looks (``status``, ``inspect``, ``dlq list``/``show``, ``keys
  audit``, ``audit``): it reads every key of the site and writes only the
  state indexes that looking keeps tidy (``state:*``, pruned and reconciled)
  and the buffer key each script names (with no list command to change it).

A ``redis+sentinel://`` URL's user must exist on each Sentinel too, with
:func:`sentinel_setuser`'s rights (it only finds the master).

``tests/backends/test_redis_acl.py`` runs each role as such a user on a real
Redis, and ``docs/redis.rst`` shows :func:`setuser` for a site named ``obs``.
"""

from __future__ import annotations

from ccat_buffering.write.models import check_identifier

__all__ = ["ROLES", "SENTINEL", "sentinel_setuser", "setuser"]

# A Cluster client also maps the slots (CLUSTER SLOTS/SHARDS, COMMAND) and follows ASK.
_CONNECT = ("hello", "select", "ping", "cluster|slots", "cluster|shards", "asking", "command")
_SCRIPTS = ("evalsha", "script|load", "script|exists", "time")
# The write path's library (see _functions): without these, it runs as a script (slower).
_FUNCTIONS = ("fcall", "function|load")
_LOOK: tuple[str, ...] = ("info", "config|get", "get", "mget", "exists", "type", "pttl")
_LOOK += ("hget", "hlen", "hvals", "llen", "lrange", "zcard", "zrange", "zrangebylex")
_TIDY = ("incrby", "pexpire", "zremrangebyscore", "hset", "zadd", "zrem")
# WAIT: min_replicas makes a buffering write wait for the replicas (same round trip).
_WRITE = ("set", "mset", "del", "lpush", "ltrim", "hdel", "zremrangebylex", "multi", "exec", "wait")
_DRAIN = ("rpop", "rpush", "hkeys", "zrangebyscore", "zscore", "scan")

ROLES: dict[str, tuple[str, ...]] = {
    "service": (*_CONNECT, *_SCRIPTS, *_FUNCTIONS, *_LOOK, *_TIDY, *_WRITE),
    "worker": (*_CONNECT, *_SCRIPTS, *_FUNCTIONS, *_LOOK, *_TIDY, *_WRITE, *_DRAIN),
    "status": (*_CONNECT, *_SCRIPTS, *_LOOK, *_TIDY, "scan"),
}
"""The commands of each role (lower case, ``container|sub`` for subcommands)."""

SENTINEL = ("hello", "ping", "sentinel|masters")
"""What the same user may do on each Sentinel: find the master (no keys)."""


def setuser(role: str, site: str, user: str, password: str = "<password>") -> list[str]:
    """The arguments of ``ACL SETUSER`` for a role's user at a site.

    Args:
        role: ``service``, ``worker`` or ``status``.
        site: The site's name.
        user: The user's name.
        password: Its password (``>`` is prefixed).

    Returns:
        ``[user, "reset", "on", ">password", key patterns..., "-@all", "+cmd"...]``.

    Raises:
        KeyError: An unknown role.
    """
    check_identifier(site, "site name")
    prefix = f"site:{{{site}}}:"
    if role == "status":
        keys = [f"%R~{prefix}*", f"%RW~{prefix}transaction_buffer", f"%RW~{prefix}state:*"]
    else:
        keys = [f"~{prefix}*"]
    commands = [f"+{command}" for command in ROLES[role]]
    return [user, "reset", "on", f">{password}", *keys, "resetchannels", "-@all", *commands]


def sentinel_setuser(user: str, password: str = "<password>") -> list[str]:
    """The arguments of ``ACL SETUSER`` on each Sentinel, for a user of any role.

    A ``redis+sentinel://user:password@...`` URL authenticates to the
    Sentinels with the same user and password as to the master.

    Args:
        user: The user's name.
        password: Its password.

    Returns:
        ``[user, "reset", "on", ">password", "-@all", "+cmd"...]``.
    """
    return [user, "reset", "on", f">{password}", "-@all", *(f"+{c}" for c in SENTINEL)]
