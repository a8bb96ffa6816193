"""Kept importable for code written before :mod:`ccat_buffering.checks` was public."""

from ccat_buffering.checks import (
    check_duration,
    check_payload,
    check_record_id,
    check_status,
    check_writes,
)

__all__ = [
    "check_duration",
    "check_payload",
    "check_record_id",
    "check_status",
    "check_writes",
]
