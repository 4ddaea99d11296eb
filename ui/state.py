"""The sidebar's state: one table of defaults, set once per session, the same on every page.

Why this module exists: Streamlit makes the page's script hash part of a widget's identity, so the
clip slider drawn by the Surfaces page and the one drawn by the Smiles page are two widgets. A page
switch therefore creates a new widget, and a new widget starts from its *built-in* default (a range
slider at its full span, 0-300%; the max-spread slider at its minimum, 0.05) unless its value is in
``st.session_state`` before it is drawn. Values must not live in widget state alone.

So every sidebar value lives in the session's own store (``desk.<key>``: plain session state, which
Streamlit never cleans), seeded once per session from ``DEFAULTS``. Before a widget is drawn, the
store's value is put in its key when the widget was not drawn in the previous run on the same page
(a page switch, a run that stopped before reaching it, options that changed): exactly the cases
where Streamlit would otherwise fall back to the built-in default. A widget that is live keeps its
own state (pushing a value into a live widget every run makes the browser drop key presses that
arrive during a rerun). After the widget is drawn, the store takes its value (``remember``); the
``on_change`` callback stores a user's change before the rerun starts.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core import pipeline
from core.localvol import DEFAULT_CLIP

SOURCES = ("Demo market", "Yahoo Finance", "Upload file", "Saved snapshot")
_SETTINGS = pipeline.Settings()
_CLEANING = _SETTINGS.cleaning_config()


def _pct(x: float) -> int:
    return int(round(100.0 * float(x)))


#: The one table of sidebar defaults. Calibration defaults are core's own (``pipeline.Settings``,
#: ``core.localvol.DEFAULT_CLIP``, ``CleaningConfig``), shown in the units of the widgets (percent).
DEFAULTS: dict[str, Any] = {
    "source": SOURCES[0],
    "ticker": "",
    "method": _SETTINGS.method,
    "smoothing": float(_SETTINGS.smoothing),
    "clip": (_pct(DEFAULT_CLIP[0]), _pct(DEFAULT_CLIP[1])),
    "rates_override": False,
    "r": 4.0,
    "q": 1.5,
    "max_spread": float(_CLEANING.max_spread_frac),
    "min_volume": int(_CLEANING.min_volume),
    "min_oi": int(_CLEANING.min_open_interest),
    "upload_asof": "",
    "upload_spot": "",
}

#: the clip slider's span (percent): at least 0-300%, and twice the default top so the default sits mid-way
CLIP_SLIDER_MAX = max(300, 100 * int(np.ceil(2.0 * DEFAULT_CLIP[1])))

_STORE = "desk."
_INIT = "desk._init"
_PREV = "desk._drawn_prev"     # (page, {key: signature}) of the previous run
_CUR = "desk._drawn"           # the same for this run, filled as widgets are drawn


def _page() -> str:
    """The running page's script hash ('' outside a Streamlit run)."""
    ctx = get_script_run_ctx()
    return str(getattr(ctx, "page_script_hash", "") or "") if ctx is not None else ""


def init() -> None:
    """Seed the store from ``DEFAULTS`` once per session (later runs leave it alone)."""
    if st.session_state.get(_INIT):
        return
    for key, value in DEFAULTS.items():
        st.session_state.setdefault(_STORE + key, value)
    st.session_state[_INIT] = True


def begin_run() -> None:
    """Start the bookkeeping of which widgets this run draws (call once per run, before any widget)."""
    init()
    st.session_state[_PREV] = st.session_state.get(_CUR)
    st.session_state[_CUR] = (_page(), {})


def get(key: str) -> Any:
    """The stored value of a sidebar setting (its default when never set)."""
    return st.session_state.get(_STORE + key, DEFAULTS.get(key))


def put(key: str, value: Any) -> None:
    """Store a value without touching the widget (e.g. a default that depends on the data)."""
    st.session_state[_STORE + key] = value


def set_value(key: str, value: Any) -> None:
    """Set a setting from code (a callback, or before its widget is drawn in this run)."""
    st.session_state[key] = value
    st.session_state[_STORE + key] = value


def _save(key: str) -> None:
    """``on_change`` of every sidebar widget: the user's change goes to the store at once."""
    if key in st.session_state:
        st.session_state[_STORE + key] = st.session_state[key]


def _live(key: str, signature: Any) -> bool:
    prev = st.session_state.get(_PREV)
    if not prev or prev[0] != _page():
        return False
    return key in prev[1] and prev[1][key] == signature and key in st.session_state


def keep(key: str, signature: Any = None) -> dict:
    """Keyword arguments (``key``, ``on_change``, ``args``) for a sidebar widget whose value is kept.

    Puts the stored value in the widget's key unless the widget is live (drawn in the previous run of
    this page with the same ``signature``, e.g. the same options). Call ``remember`` after drawing it.
    """
    cur = st.session_state.get(_CUR)
    if cur is None:
        begin_run()
        cur = st.session_state[_CUR]
    if not _live(key, signature) and (_STORE + key in st.session_state or key in DEFAULTS):
        st.session_state[key] = get(key)
    cur[1][key] = signature
    return {"key": key, "on_change": _save, "args": (key,)}


def remember(key: str, value: Any) -> Any:
    """Store a drawn widget's value; returns it (``x = remember("k", st.slider(..., **keep("k")))``)."""
    st.session_state[_STORE + key] = value
    return value
