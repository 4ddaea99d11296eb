"""Domain exceptions and warnings, in one place.

Three tiers for bad input (STYLE.md): a malformed argument raises an ``InputError`` naming it;
a single bad quote becomes NaN with a reason code and is counted; numerical trouble warns.
Every exception message names the input and says what to do, so the UI can show it as is.
"""
from __future__ import annotations


class DupireDeskError(Exception):
    """Base of every error Dupire Desk raises on purpose."""


class InputError(DupireDeskError, ValueError):
    """A malformed argument: wrong shape, type, sign or missing column. The message names it."""


class FormatError(InputError):
    """A file that no loader understands (the message lists the accepted formats)."""


class DataSourceError(DupireDeskError):
    """A data source could not deliver (network, unknown ticker, no options, timeout)."""


class SourceTimeout(DataSourceError):
    """A data source did not answer within the configured bound."""


class NetworkError(DataSourceError):
    """No network, DNS failure or connection refused."""


class RateLimitError(DataSourceError):
    """The data vendor refused because of rate limiting (HTTP 429)."""


class UnknownTickerError(DataSourceError):
    """The ticker is not known to the data source."""


class NoOptionsError(DataSourceError):
    """The ticker exists but has no listed options (or none usable)."""


class SnapshotError(DataSourceError):
    """A saved snapshot could not be read or written (corrupt, truncated, read-only folder)."""


class FitError(DupireDeskError):
    """A surface could not be fitted at all (too few quotes, all invalid)."""


class ConvergenceWarning(UserWarning):
    """An optimiser stopped without meeting its tolerance; the result is usable but flagged."""


class ArbitrageWarning(UserWarning):
    """A result violates a static no-arbitrage condition (butterfly or calendar)."""


def optional_number(name: str, value, *, positive: bool = False, hint: str = "") -> float | None:
    """``value`` as a finite float (``> 0`` when ``positive``), or None when it is None; otherwise an
    ``InputError`` naming ``name`` (and ``hint``: what to give instead). The one check of a user's number."""
    if value is None:
        return None
    tail = f"; {hint}" if hint else ""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} {value!r} is not a number{tail}") from None
    if not (x == x and abs(x) != float("inf")) or (positive and x <= 0):
        raise InputError(f"{name} must be a finite{' positive' if positive else ''} number, got {value!r}{tail}")
    return x

