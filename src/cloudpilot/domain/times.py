"""Times for people: every time in a message, a reason or a log line is ISO 8601 in UTC, never epoch seconds."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(timestamp: float) -> str:
    """``2027-01-15T08:00:00Z``: a UNIX time in UTC, to the second."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
