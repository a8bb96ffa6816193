"""The async-context-manager shape every long-lived object of the library shares."""

from __future__ import annotations

from typing import Self

__all__ = ["AsyncClosing"]


class AsyncClosing:
    """``async with obj`` returns ``obj`` and calls ``obj.aclose()`` on the way out."""

    async def aclose(self) -> None:
        """Release what the object opened itself."""

    async def __aenter__(self) -> Self:
        """Return the object."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the object."""
        await self.aclose()
