"""The Redis backend of ccat-buffering: atomic, crash-safe and cluster-ready."""

from ccat_buffering_redis.backend import RedisBackend
from ccat_buffering_redis.keys import SiteKeys

__all__ = ["RedisBackend", "SiteKeys"]
