"""JSON merge patches (RFC 7386): the ``merge`` policy's arithmetic."""

from __future__ import annotations

from typing import Any

__all__ = ["merge_patch", "patch_between"]


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 merge patch to a JSON document.

    Args:
        target: The stored document (not changed).
        patch: The patch: an object merges key by key (``None`` removes a
            key), anything else replaces the target whole.

    Returns:
        The patched document.
    """
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result


def patch_between(base: Any, mine: Any) -> Any:
    """The merge patch that turns ``base`` into ``mine``: only the keys the writer changed.

    ``merge_patch(base, patch_between(base, mine)) == mine`` for documents
    without ``null`` values (a merge patch cannot set a key to ``null``).

    Args:
        base: The document as the writer saw it.
        mine: The document the writer wrote.

    Returns:
        The patch.
    """
    if not isinstance(base, dict) or not isinstance(mine, dict):
        return mine
    patch: dict[str, Any] = {}
    for name in base.keys() - mine.keys():
        patch[name] = None
    for name, value in mine.items():
        if name not in base:
            patch[name] = value
        elif base[name] != value:
            patch[name] = patch_between(base[name], value)
    return patch
