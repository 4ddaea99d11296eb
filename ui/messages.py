"""Every failure as a message a trader understands: what went wrong and what to do next.

``explain(exc)`` maps the domain exceptions of ``core.errors`` to a (headline, advice) pair (pure,
testable); ``page_guard()`` wraps a page body so that a domain error becomes ``st.error`` / ``st.warning``
and anything unexpected becomes an error with a details expander (type and message only, never a
traceback). Streamlit's own control flow (``st.stop``, ``st.rerun``) passes through untouched: those
are ``BaseException`` subclasses, not ``Exception``.
"""
from __future__ import annotations

import contextlib
import logging

import streamlit as st

from core import errors as E

log = logging.getLogger("dupire_desk.ui")

OFFLINE_ADVICE = ("Use the **Demo market** (it works offline) or upload a chain file; every earlier Yahoo "
                  "download is kept as a saved snapshot.")

#: exception class -> (headline, advice); the first match in this order wins (subclasses first).
_ADVICE: list[tuple[type[BaseException], str, str]] = [
    (E.SourceTimeout, "Yahoo Finance did not answer in time.",
     "The network may be down or blocked. " + OFFLINE_ADVICE),
    (E.NetworkError, "No network connection to Yahoo Finance.", OFFLINE_ADVICE),
    (E.RateLimitError, "Yahoo Finance is rate-limiting requests.",
     "Wait a minute and try again, or " + OFFLINE_ADVICE[0].lower() + OFFLINE_ADVICE[1:]),
    (E.UnknownTickerError, "Unknown ticker.", "Check the symbol (e.g. SPY, AAPL, ^SPX) and try again."),
    (E.NoOptionsError, "No listed options for this ticker.",
     "Pick a ticker with listed options (e.g. SPY, QQQ, AAPL), or use the demo market."),
    (E.SnapshotError, "The saved snapshot could not be read.",
     "It was left on disk untouched. Choose another snapshot, the demo market, or download again."),
    (E.DataSourceError, "The data source could not deliver.", OFFLINE_ADVICE),
    (E.FormatError, "This file is not an option chain we can read.",
     "Upload a CBOE delayed-quotes download, a yfinance-style CSV or a tidy CSV with the columns "
     "expiry, strike, cp, bid, ask (see the Data page for an example export)."),
    (E.FitError, "The surface could not be fitted.",
     "Too few usable quotes: widen the quote filters (max spread, min volume/open interest), "
     "select more expiries, or try another method."),
    (E.InputError, "The input was not usable.", "Change the setting named in the message and try again."),
]


def explain(exc: BaseException) -> tuple[str, str]:
    """``(headline, advice)`` for an exception; unknown kinds get a generic pair."""
    for cls, head, advice in _ADVICE:
        if isinstance(exc, cls):
            return head, advice
    return ("Something went wrong while computing this page.",
            "Try another setting or data source; the details below help to report it.")


#: failures of the network path: the headline says all a trader needs; the transport's own words
#: (curl codes, host names, socket errors) go into a collapsed "Technical details" instead
TRANSPORT = (E.SourceTimeout, E.NetworkError, E.RateLimitError)


def message(exc: BaseException) -> str:
    """The text shown for an exception: headline, the exception's own words (not for transport
    failures: ``TRANSPORT``), the advice."""
    head, advice = explain(exc)
    if isinstance(exc, TRANSPORT):
        return f"**{head}** {advice}"
    return f"**{head}** {_clean(exc)}\n\n{advice}"


def show_error(exc: BaseException, *, warning: bool = False) -> None:
    """Show an exception as a plain message (``message``); a transport failure's own words are kept
    in a collapsed expander for a bug report."""
    (st.warning if warning else st.error)(message(exc))
    if isinstance(exc, TRANSPORT) and str(exc).strip():
        with st.expander("Technical details"):
            st.text(f"{type(exc).__name__}: {_clean(exc)}")


def _clean(exc: BaseException) -> str:
    msg = str(exc).strip()
    if not msg:
        return ""
    # The exception's own message names the input (core's convention); keep it short.
    return msg if len(msg) < 600 else msg[:600] + "..."


@contextlib.contextmanager
def page_guard():
    """Run a page body: domain errors become a message and stop the page; anything else becomes an
    error with an expander holding the exception's type and message (no traceback)."""
    try:
        yield
    except E.DupireDeskError as exc:
        show_error(exc)
        st.stop()
    except Exception as exc:  # noqa: BLE001 - the last line of defence: never a traceback
        log.exception("unexpected error in a page")
        head, advice = explain(exc)
        st.error(f"**{head}** {advice}")
        with st.expander("Details for a bug report"):
            st.text(f"{type(exc).__name__}: {_clean(exc)}")
        st.stop()
