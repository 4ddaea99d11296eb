"""The sidebar shared by every page: data source, expiries, method and settings; state kept across pages.

``sidebar()`` draws the controls, loads the chosen chain (through the caches of ``ui.data``) and returns
a ``Selection`` (chain, its content-hash key, a state line, the ``Settings``). Widget keys are fixed
(``WIDGET_KEYS``) and created with ``persist_state="session"`` so that they survive a page switch
(Streamlit forgets a widget's state when a page without it runs). Page-specific widgets use
page-prefixed keys (``surfaces.axis``, ``smiles.expiry``, ...). When a source cannot deliver, the
sidebar says why and offers the demo and the saved snapshots; the page stops with a message.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import pandas as pd
import streamlit as st

from core import pipeline
from core.errors import DupireDeskError, InputError, NoOptionsError
from core.quotes import QuoteChain
from ui import data, messages

SOURCES = ("Demo market", "Yahoo Finance", "Upload file", "Saved snapshot")
METHODS = {
    "ssvi": "SSVI surface (arbitrage-free)",
    "svi": "SVI per expiry",
    "smooth": "Smooth non-parametric",
    "price-fd": "Naive: finite differences of prices",
    "price-spline": "Naive: spline of prices",
}
DEFAULT_CLIP_PCT = (2, 200)
DEFAULTS: dict[str, Any] = {
    "source": SOURCES[0], "ticker": "", "method": "ssvi", "smoothing": 0.0, "clip": DEFAULT_CLIP_PCT,
    "rates_override": False, "r": 4.0, "q": 1.5, "max_spread": 1.5, "min_volume": 0, "min_oi": 0,
}
WIDGET_KEYS = tuple(DEFAULTS) + ("expiries", "yahoo_pick", "snapshot", "upload")


@dataclasses.dataclass(frozen=True)
class Selection:
    """What the pages compute on: the chain, its cache key, how to describe it, the settings."""

    chain: QuoteChain
    key: str
    kind: str               # demo | yahoo | upload | snapshot
    label: str              # the source's state line
    settings: pipeline.Settings
    ident: tuple = ()       # the loader's hashed arguments (to forget a bad entry)

    def run(self, stage, *args):
        """Call a cached stage of ``ui.data``; on a domain error forget the source's cached load
        (so a retry reads it afresh) and re-raise for the page guard to show."""
        try:
            return stage(self.key, self.chain, self.settings, *args)
        except DupireDeskError:
            data.forget_source(self.kind, self.ident)
            raise


# ------------------------------------------------------------------------------------------ state
def _save(key: str) -> None:
    """``on_change`` of every sidebar widget: copy its value to the session's own ``desk.<key>``."""
    st.session_state[f"desk.{key}"] = st.session_state[key]


def _keep(key: str) -> dict:
    """Widget keyword arguments (``key``, ``on_change``) that keep its value across pages.

    Streamlit drops a widget's state when a page without that widget runs, and a page switch
    runs the new page's script from the top; so the value lives under ``desk.<key>`` (plain session
    state, never cleaned) and is put back before the widget is created.
    """
    store = f"desk.{key}"
    if store in st.session_state:
        st.session_state[key] = st.session_state[store]
    elif key not in st.session_state and key in DEFAULTS:
        st.session_state[key] = DEFAULTS[key]
    return {"key": key, "on_change": _save, "args": (key,)}


def _set(key: str, value) -> None:
    """Set a sidebar widget's value from code (before the widget is created in this run)."""
    st.session_state[key] = value
    st.session_state[f"desk.{key}"] = value


def use_demo() -> None:
    """Callback of the 'use the demo market' buttons."""
    _set("source", SOURCES[0])


def use_snapshots() -> None:
    """Callback of the 'open a saved snapshot' buttons."""
    _set("source", SOURCES[3])


def _offer_fallbacks(where) -> None:
    c1, c2 = where.columns(2)
    c1.button("Use the demo market", on_click=use_demo, key="fallback_demo")
    c2.button("Open a saved snapshot", on_click=use_snapshots, key="fallback_snapshot")


def _fail(exc: BaseException) -> None:
    """A source failure: message in the sidebar and the page, fallbacks offered, page stopped."""
    head, _ = messages.explain(exc)
    st.sidebar.error(head)
    messages.show_error(exc)
    _offer_fallbacks(st)
    st.stop()


# ------------------------------------------------------------------------------------------ sources
def _demo() -> tuple[QuoteChain, str, tuple]:
    chain = data.demo(7)
    return chain, "Demo market: synthetic SSVI quotes, not real prices", (7,)


def _upload(sb) -> tuple[QuoteChain, str, tuple] | None:
    f = sb.file_uploader("Option chain file (CBOE download, yfinance CSV, tidy CSV)",
                         type=["csv", "txt", "dat"], key="upload",
                         help=f"Up to {data.MAX_UPLOAD_MB} MB. The file stays in this session only.")
    kept = st.session_state.get("keep.upload_chain")
    if f is not None:
        content = f.getvalue()
        name = data.safe_name(f.name)
        if len(content) > data.MAX_UPLOAD_MB * 1024 * 1024:
            raise InputError(f"the file is {len(content) / 2**20:.1f} MB; the limit is {data.MAX_UPLOAD_MB} MB: "
                             "export only the expiries you need")
        digest = data.bytes_digest(content)
        if not kept or kept[2] != digest:
            chain = data.upload(digest, content, name)
            kept = (chain, name, digest)
            st.session_state["keep.upload_chain"] = kept
    if not kept:
        return None
    chain, name, digest = kept
    return chain, f"Uploaded file: {name}", (digest, name)


def _snapshot(sb) -> tuple[QuoteChain, str, tuple] | None:
    snaps = data.snapshots()
    if not snaps:
        return None
    labels: dict[str, Any] = {}
    for info in snaps:
        label = getattr(info, "label", None) or str(getattr(info, "path", info))
        labels[f"{label} - {str(getattr(info, 'path', info)).split('/')[-1]}"] = info
    if st.session_state.get("desk.snapshot", st.session_state.get("snapshot")) not in labels:
        _set("snapshot", next(iter(labels)))
    choice = sb.selectbox("Saved snapshot", list(labels), **_keep("snapshot"),
                          help="Every successful Yahoo download is saved here; unreadable files are listed, never deleted.")
    info = labels[choice]
    path = str(getattr(info, "path", info))
    try:
        stt = os.stat(path)
        mtime, size = stt.st_mtime, stt.st_size
    except OSError:
        mtime, size = 0.0, 0
    chain = data.snapshot(path, mtime, size)
    when = pd.Timestamp(chain.asof).tz_convert("UTC").strftime("%Y-%m-%d %H:%M")
    return chain, f"Snapshot of {chain.underlying} taken {when} UTC", (path, mtime, size)


def _yahoo(sb) -> tuple[QuoteChain, str, tuple] | None:
    text = sb.text_input("Ticker", **_keep("ticker"), placeholder="e.g. SPY, AAPL, ^SPX",
                         help="A Yahoo Finance symbol with listed options.")
    if not text.strip():
        st.info("Type a ticker in the sidebar (e.g. SPY), pick expiries and press **Download chain**.")
        st.stop()
    ticker = data.valid_ticker(text)
    if ticker is None:
        sb.error("Not a ticker")
        st.error(f"**{text.strip()[:20]!r} is not a ticker.** Use letters, digits and . - ^ = only, "
                 "at most 12 characters (e.g. SPY, BRK-B, ^SPX).")
        st.stop()
    try:
        listed = data.yahoo_expiries(ticker)
    except DupireDeskError as exc:
        _fail(exc)
    if not listed:
        _fail(NoOptionsError(f"{ticker} lists no option expiries"))
    if st.session_state.get("keep.yahoo_for") != ticker or any(e not in listed for e in st.session_state.get("desk.yahoo_pick", [])):
        horizon = pd.Timestamp.now().normalize() + pd.Timedelta(days=730)
        _set("yahoo_pick", [e for e in listed if pd.Timestamp(e) <= horizon][:12])
        st.session_state["keep.yahoo_for"] = ticker
    pick = sb.multiselect("Expiries to download", listed, **_keep("yahoo_pick"),
                          help="Each expiry is one request to Yahoo; 8-12 expiries take a few seconds.")
    chains: dict = st.session_state.setdefault("keep.yahoo_chains", {})
    if sb.button("Download chain", key="yahoo_download", type="primary", disabled=not pick):
        if len(pick) < 2:
            raise InputError("pick at least two expiries to download: local vol needs a term structure")
        with st.status(f"Downloading {ticker} from Yahoo Finance...", expanded=True) as status:
            bar = st.progress(0.0, text="starting")

            def progress(done: int, total: int, msg: str = "") -> None:
                bar.progress(min(1.0, done / max(total, 1)), text=f"{done}/{total} {msg}".strip())
            try:
                chain = data.yahoo_chain(ticker, list(pick), progress=progress)
            except DupireDeskError as exc:
                status.update(label="Download failed", state="error")
                _fail(exc)
            status.update(label=f"Downloaded {len(chain.quotes):,} quotes of {ticker}", state="complete",
                          expanded=False)
        chains[ticker] = (chain, pd.Timestamp.now(tz="UTC"))
    if ticker not in chains:
        st.info(f"Pick the expiries of **{ticker}** in the sidebar and press **Download chain**.")
        st.stop()
    chain, when = chains[ticker]
    failed = list(chain.meta.get("failed_expiries", []) or [])
    if failed:
        sb.warning(f"{len(failed)} expiries could not be downloaded and are left out: "
                   f"{', '.join(map(str, failed[:6]))}{'...' if len(failed) > 6 else ''}")
    if chain.meta.get("snapshot_error"):
        sb.warning(f"The download is kept in this session but could not be saved as a snapshot: "
                   f"{chain.meta['snapshot_error']}")
    return chain, f"Live: Yahoo Finance {ticker}, downloaded {when:%Y-%m-%d %H:%M} UTC", (ticker, str(when))


# ------------------------------------------------------------------------------------------ sidebar
def sidebar() -> Selection:
    """Draw the shared sidebar and return the ``Selection``; stops the page with a message when the
    source cannot deliver or a setting is unusable."""
    sb = st.sidebar
    sb.markdown("### Data")
    source = sb.radio("Data source", SOURCES, **_keep("source"),
                      help="The demo market works offline; Yahoo needs a network; uploads stay in this session.")
    loaded = None
    kind = {"Demo market": "demo", "Yahoo Finance": "yahoo", "Upload file": "upload", "Saved snapshot": "snapshot"}[source]
    try:
        if kind == "demo":
            loaded = _demo()
        elif kind == "upload":
            loaded = _upload(sb)
            if loaded is None:
                st.info("Upload an option chain in the sidebar: a CBOE delayed-quotes download, a yfinance-style "
                        "CSV or a tidy CSV (expiry, strike, cp, bid, ask). Or pick the demo market.")
                st.stop()
        elif kind == "snapshot":
            loaded = _snapshot(sb)
            if loaded is None:
                st.info("No saved snapshots yet: every successful Yahoo download is saved as one. "
                        "Use the demo market or upload a file meanwhile.")
                _offer_fallbacks(st)
                st.stop()
        else:
            loaded = _yahoo(sb)
    except DupireDeskError as exc:
        if kind == "upload":
            st.session_state.pop("keep.upload_chain", None)
        _fail(exc)
    chain, label, ident = loaded
    key = f"{kind}:{data.chain_digest(chain)}"
    _state_line(sb, chain, label)
    settings = _settings(sb, chain, key, kind, ident)
    return Selection(chain=chain, key=key, kind=kind, label=label, settings=settings, ident=ident)


def _state_line(sb, chain: QuoteChain, label: str) -> None:
    sb.caption(label)
    spot = f"{chain.spot:,.2f}" if chain.spot is not None else "n/a (forwards from parity)"
    asof = pd.Timestamp(chain.asof).tz_convert("UTC").strftime("%Y-%m-%d %H:%M UTC")
    sb.markdown(f"**{chain.underlying or 'unknown'}** · spot {spot}  \nquotes at {asof}")
    if chain.exercise == "american":
        sb.warning("American options: parity forwards are approximate; only out-of-the-money quotes are used.")


def _settings(sb, chain: QuoteChain, key: str, kind: str, ident: tuple) -> pipeline.Settings:
    sb.markdown("### Calibration")
    method = sb.selectbox("Method", list(METHODS), format_func=METHODS.get, **_keep("method"),
                          help="SSVI is arbitrage-free by construction but has one skew for the whole surface: "
                               "exact on the demo, loose on real index quotes. For real quotes choose SVI per "
                               "slice (the tightest fit inside bid/ask) or the non-parametric smooth. The naive "
                               "methods differentiate prices numerically (what the seed scripts do), for comparison.")
    smoothing = sb.slider("Smoothing", 0.0, 1.0, step=0.05, **_keep("smoothing"),
                          help="0 follows the quotes as closely as no-arbitrage allows; 1 is strongly regularised.")
    clip = sb.slider("Local-vol clip band (%)", 0, 300, step=1, **_keep("clip"),
                     help="Local vol outside this band is clipped to it and the cells are flagged.")
    with sb.expander("Rates and quote filters"):
        override = st.checkbox("Override r and q (else from put-call parity)", **_keep("rates_override"))
        r = st.number_input("r (% a year)", -5.0, 20.0, step=0.25, **_keep("r"), disabled=not override)
        q = st.number_input("q, dividend yield (% a year)", -5.0, 20.0, step=0.25, **_keep("q"), disabled=not override)
        max_spread = st.slider("Max spread / mid", 0.05, 2.0, step=0.05, **_keep("max_spread"),
                               help="Quotes with a wider bid/ask relative to the mid are not used.")
        min_vol = st.number_input("Min volume", 0, 1_000_000, step=1, **_keep("min_volume"))
        min_oi = st.number_input("Min open interest", 0, 1_000_000, step=1, **_keep("min_oi"))
    lo, hi = clip
    if not hi > lo:
        raise InputError("the clip band is empty: move the upper handle above the lower one")
    base = pipeline.Settings(
        method=method, smoothing=float(smoothing), clip=(lo / 100.0, hi / 100.0),
        r=float(r) / 100.0 if override else None, q=float(q) / 100.0 if override else None,
        max_spread_frac=float(max_spread), min_volume=float(min_vol), min_open_interest=float(min_oi))
    # The default expiry selection is the pipeline's own rule (enough quotes, up to max_T years).
    try:
        prep = data.prepared(key, chain, base)
    except DupireDeskError as exc:
        data.forget_source(kind, ident)
        _fail(exc)
    available = sorted(prep.quotes["expiry"].dt.strftime("%Y-%m-%d").unique())
    default = list(prep.expiries)
    current = st.session_state.get("desk.expiries")
    if st.session_state.get("keep.expiries_for") != key or current is None or any(e not in available for e in current):
        _set("expiries", default)
        st.session_state["keep.expiries_for"] = key
    chosen = sb.multiselect("Expiries to fit", available, **_keep("expiries"),
                            help="Default: every expiry with enough usable quotes up to 2.5 years.")
    if not default and len(chosen) < 2:
        st.warning("No expiry has enough usable quotes with these quote filters: relax max spread, min volume "
                   "or min open interest in the sidebar (see the Data page for the reason of each quote).")
        st.stop()
    if len(chosen) < 2:
        st.warning("Select at least two expiries in the sidebar: local vol needs a term structure.")
        st.stop()
    expiries = None if sorted(chosen) == sorted(default) else tuple(sorted(chosen))
    return dataclasses.replace(base, expiries=expiries)


def chart(fig, key: str, *, name: str | None = None) -> None:
    """Show a Plotly figure with a download of it as a standalone HTML file (built on click)."""
    from ui.figures import figure_html

    st.plotly_chart(fig, key=key, config={"displaylogo": False})
    st.download_button("Download chart (HTML)", data=lambda: figure_html(fig),
                       file_name=data.download_name(name or key, ext="html"), mime="text/html",
                       key=f"{key}.html", on_click="ignore")


def page_header(title: str, what: str) -> None:
    """Page setup (wide layout), title and a one-line description of what the page shows."""
    try:
        st.set_page_config(page_title=f"{title} - Dupire Desk", layout="wide")
    except Exception:  # noqa: BLE001 - set twice in one run (AppTest switch_page): harmless
        pass
    st.title(title)
    st.caption(what)
