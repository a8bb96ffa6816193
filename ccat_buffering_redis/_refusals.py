"""Refusals by the server's ACL or its authentication, named for the operator.

A user without the right to a command gets ``NOPERM ... the 'info' command``
from a direct call, but only ``The user executing the script can't run this
command ... on @user_script:95`` from inside a script (``@user_function``
from a Redis Function): the line is then read back from the script's (or
library's) own source to name the command (``TIME``, ``RPOP``, ...). A wrong
password must read "authentication failed", not
"cannot be reached" (redis-py raises it as a connection error).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["auth_failure", "refusal"]

_COMMAND = re.compile(r"no permissions to run the '([^']+)' command")
_KEYS = ("no permissions to access one of the keys", "can't access at least one of the keys")
_IN_SCRIPT = re.compile(r"script: (\w+), on @user_(?:script|function):(\d+)")
_CALL = re.compile(r"redis\.p?call\(\s*'(\w+)'")

OUTSIDE_KEYS = "a key outside this user's key patterns (it needs ~site:{<site>}:*)"


def refusal(message: str, scripts: Mapping[str, str]) -> str | None:
    """What the ACL refused, named (``the TIME command``), or ``None`` if it was no refusal.

    Args:
        message: The server's error text.
        scripts: The library's scripts' sources by SHA1 (and its Redis
            Functions' libraries by function name), to read a refused line from.
    """
    if (found := _COMMAND.search(message)) is not None:
        return f"the {found.group(1).upper()} command"
    in_script = _IN_SCRIPT.search(message)
    if any(text in message for text in _KEYS):
        return OUTSIDE_KEYS
    if in_script is None or "can't run this command" not in message:
        return "a command or key (NOPERM)" if "NOPERM" in message else None
    sha, number = in_script.group(1), int(in_script.group(2))
    lines = scripts.get(sha, "").splitlines()
    line = lines[number - 1] if 0 < number <= len(lines) else ""
    call = _CALL.search(line)
    what = f"the {call.group(1).upper()} command" if call else "a command"
    return f"{what} (in a script of the library, at line {number})"


def auth_failure(where: str, detail: str) -> str:
    """The message of a failed authentication (a wrong or missing password or user)."""
    return (
        f"{where}: authentication failed ({detail.rstrip('.')}): check the user name and "
        "password of the backend URL, and that the user is enabled (ACL SETUSER ... on)"
    )
