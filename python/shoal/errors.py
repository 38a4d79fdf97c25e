"""shoal's exceptions: one class per `shoal::ErrorKind`, each carrying the
library's message (which names the key, partition or field at fault).

    ShoalError             base; also a bug or environment problem (bad
                           credentials, a panicked worker, a closed handle)
    ├── InvalidInput       the request is wrong; nothing was written (also a ValueError)
    ├── NotFound           no index at the URL, or nothing by that name (also a LookupError)
    ├── Conflict           someone else changed shared state first; re-read, then retry
    ├── Unavailable        the store is down or throttling: the same call may succeed later
    └── CorruptData        an object in the bucket is damaged; run `shoal verify`
"""
from __future__ import annotations

__all__ = ["ShoalError", "InvalidInput", "NotFound", "Conflict", "Unavailable", "CorruptData"]


class ShoalError(Exception):
    """Any error shoal raises. `retryable` says whether the same call may
    succeed later unchanged."""

    retryable: bool = False


class InvalidInput(ShoalError, ValueError):
    """The request is wrong (bad vector, filter, setting, ids): fix it.
    Nothing was written."""


class NotFound(ShoalError, LookupError):
    """What was asked for does not exist (e.g. no index at the URL and
    `create=False` or no `dimensions` to create one)."""


class Conflict(ShoalError):
    """Someone else changed shared state first (e.g. the bucket's config
    says other dimensions than requested)."""


class Unavailable(ShoalError):
    """The store is unavailable or throttling, or contention did not
    settle: retrying may help."""

    retryable = True


class CorruptData(ShoalError):
    """An object in the bucket is damaged, foreign or missing although
    referenced; the message names its key. Run `shoal verify`."""
