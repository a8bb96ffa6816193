"""The in-memory backend of ccat-buffering, for tests and the embedded default."""

from ccat_buffering_memory.backend import MemoryBackend

__all__ = ["MemoryBackend"]
