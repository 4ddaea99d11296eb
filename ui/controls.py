"""The sidebar shared by every page: navigation, data source, calibration settings; state kept across pages.

``sidebar()`` draws the controls, loads the chosen chain (through the caches of ``ui.data``) and returns
a ``Selection`` (chain, its content-hash key, a state line, the ``Settings``). Every sidebar value is
kept by ``ui.state`` (one table of defaults, set once per session, identical on every page).
Page-specific widgets use page-prefixed keys (``surfaces.axis``, ``smiles.expiry``, ...). When a
source cannot deliver, the page says why once, offers the demo (and the saved snapshots when there
are any) and stops.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitAPIException

from core import pipeline
from core.cleaning import use_mask
from core.errors import DupireDeskError, InputError, NoOptionsError
from core.quotes import NEW_YORK, QuoteChain
from ui import data, messages, series, state
from ui.figures import figure_html
from ui.state import SOURCES

#: what each method is called in the picker; a method core adds later shows under its own name
METHOD_LABELS = {
    "spline": "Spline surface (default for real quotes)",
    "ssvi": "SSVI surface (arbitrage-free, one skew)",
    "essvi": "eSSVI surface (arbitrage-free, skew per expiry)",
    "svi": "SVI per expiry",
    "smooth": "Smooth non-parametric",
    "price-fd": "Naive: finite differences of prices",
    "price-spline": "Naive: spline of prices",
}
#: when to use which method, measured on the real index chains of shared/data/cboe_modern (used quotes fitted
#: inside their bid/ask, SPX 2022-2024 and NDX 2023; `python -m bench real`, README's method table)
METHOD_GUIDE = {
    "spline": "96-99.8% inside, round trip the same, about 0.5 s, local vol without stripes: real chains",
    "smooth": "99-100% inside, each smile followed exactly; 5-21 s and local vol stripes (1.5-12% of cells)",
    "svi": "98-100% inside, an SVI slice (plus a correction) per expiry to read and export; 1-9 s, stripes (3-8%)",
    "essvi": "28-64% inside: 3 numbers per expiry cannot follow SPX spreads; a parsimonious arbitrage-free "
             "surface, under 1 s",
    "ssvi": "14-42% inside: one skew for the whole surface; the demo, teaching, stress tests",
    "price-fd": "the seeds' way (finite differences of prices), kept to show why we do not use it",
    "price-spline": "the seeds' way (a spline of prices), kept to show why we do not use it",
}
#: the navigation: the landing page is named after the product (Streamlit would call it "app")
PAGES = (("app.py", "Dupire Desk"), ("pages/1_Surfaces.py", "Surfaces"), ("pages/2_Smiles.py", "Smiles"),
         ("pages/3_Arbitrage.py", "Arbitrage"), ("pages/4_Validation.py", "Validation & pricing"),
         ("pages/5_Data.py", "Data & export"), ("pages/6_Risk.py", "Risk"))


def method_label(name: str) -> str:
    return METHOD_LABELS.get(name, name)


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


# ------------------------------------------------------------------------------------------ fallbacks
def use_demo() -> None:
    """Callback of the 'use the demo market' buttons."""
    state.set_value("source", SOURCES[0])


def use_snapshots() -> None:
    """Callback of the 'open a saved snapshot' buttons."""
    state.set_value("source", SOURCES[3])


def _offer_fallbacks(where) -> None:
    has_snapshots = bool(data.snapshots())
    cols = where.columns(2 if has_snapshots else 1)
    cols[0].button("Use the demo market", on_click=use_demo, key="fallback_demo")
    if has_snapshots:
        cols[1].button("Open a saved snapshot", on_click=use_snapshots, key="fallback_snapshot")


def _fail(exc: BaseException) -> None:
    """A source failure: one message on the page, the fallbacks offered, the page stopped."""
    messages.show_error(exc)
    _offer_fallbacks(st)
    st.stop()


# ------------------------------------------------------------------------------------------ navigation
def nav(sb) -> None:
    """Links to every page at the top of the sidebar (``client.showSidebarNavigation`` is off)."""
    for path, label in PAGES:
        try:
            sb.page_link(path, label=label)
        except StreamlitAPIException:
            # a page run on its own (AppTest.from_file("pages/...")) has no other pages to link to
            return


# ------------------------------------------------------------------------------------------ sources
def _demo() -> tuple[QuoteChain, str, tuple]:
    chain = data.demo(7)
    return chain, "Demo market: synthetic SSVI quotes, not real prices", (7,)


def ny(ts) -> str:
    """A time as New York wall clock, 'YYYY-MM-DD HH:MM' ('' when missing)."""
    if ts is None or pd.isna(ts):
        return ""
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t
    return t.tz_convert(NEW_YORK).strftime("%Y-%m-%d %H:%M")


def _time_override(text: str) -> str | None:
    """The quote-time field as the loader's ``asof`` (naive = New York), or None when blank."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        t = pd.Timestamp(text)
    except (ValueError, TypeError):
        t = pd.NaT
    if pd.isna(t):
        raise InputError(f"quote time {text[:40]!r} is not a time: write it as YYYY-MM-DD HH:MM (New York), "
                         "e.g. 2024-01-05 16:15")
    if t.tzinfo is not None:
        t = t.tz_convert(NEW_YORK).tz_localize(None)
    return t.strftime("%Y-%m-%d %H:%M:%S")


def _spot_override(text: str) -> float | None:
    text = (text or "").strip().replace(",", "")
    if not text:
        return None
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (v > 0 and v < float("inf")):
        raise InputError(f"spot {text[:30]!r} is not a positive number: write it as e.g. 4697.24, or leave it "
                         "empty to take the file's (or put-call parity's)")
    return v


def _forget_upload() -> None:
    """Callback of 'Remove': drop the kept files and the fields filled from them."""
    st.session_state.pop("keep.upload", None)
    state.set_value("upload_asof", "")
    state.set_value("upload_spot", "")


def _upload(sb) -> tuple[QuoteChain, str, tuple] | None:
    """Files in, chain out; the files stay loaded across pages (Streamlit's uploader forgets them on a
    page switch: ``keep.upload`` does not) and say so; quote time and spot are fields, filled from
    the files and editable."""
    files = sb.file_uploader("Option chain files (CBOE downloads, yfinance CSV, tidy CSV)",
                             type=["csv", "txt", "dat"], key="upload", accept_multiple_files=True,
                             help=f"One or several files of one underlying and day, up to {data.MAX_UPLOAD_MB} MB "
                                  "in all. They stay in this session only.")
    if files:
        contents = tuple(f.getvalue() for f in files)
        names = tuple(data.safe_name(f.name) for f in files)
        total = sum(len(c) for c in contents)
        if total > data.MAX_UPLOAD_MB * 1024 * 1024:
            raise InputError(f"the files hold {total / 2**20:.1f} MB; the limit is {data.MAX_UPLOAD_MB} MB: "
                             "export only the expiries you need")
        h = hashlib.sha256()
        for n, c in zip(names, contents, strict=True):
            h.update(n.encode() + b"\0" + hashlib.sha256(c).digest())
        digest = h.hexdigest()[:16]
        kept = st.session_state.get("keep.upload")
        if not kept or kept["digest"] != digest:
            st.session_state["keep.upload"] = {"digest": digest, "contents": contents, "names": names,
                                               "file_values": None}
            state.set_value("upload_asof", "")
            state.set_value("upload_spot", "")
    kept = st.session_state.get("keep.upload")
    if not kept:
        return None
    digest, contents, names = kept["digest"], kept["contents"], kept["names"]
    shown = names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more"

    # what the files say on their own: fills the fields once per set of files
    error0 = None
    try:
        chain0 = data.upload(digest, contents, names, None, None)
    except DupireDeskError as exc:
        chain0, error0 = None, exc
    if chain0 is not None and kept["file_values"] is None:
        kept["file_values"] = (ny(chain0.asof), f"{chain0.spot:.2f}" if chain0.spot is not None else "")
        state.set_value("upload_asof", kept["file_values"][0])
        state.set_value("upload_spot", kept["file_values"][1])
    file_asof, file_spot = kept["file_values"] or ("", "")

    box = sb.container(border=True)
    box.markdown(f"**In use:** {shown}" + (f"  \n{len(chain0.quotes):,} quotes" if chain0 is not None else ""))
    asof_text = state.remember("upload_asof", box.text_input(
        "Quote time (New York)", placeholder="YYYY-MM-DD HH:MM", **state.keep("upload_asof"),
        help="When the prices were taken. Filled from the file; change it if the file's time is wrong or "
             "missing. Times to expiry run from the last market close at or before it."))
    spot_text = state.remember("upload_spot", box.text_input(
        "Spot", placeholder="from put-call parity", **state.keep("upload_spot"),
        help="The underlying's price at the quote time. Filled from the file; empty = forwards from "
             "put-call parity alone."))
    box.button("Remove", key="upload_remove", on_click=_forget_upload, help="Unload these files")

    asof = _time_override(asof_text)
    spot = _spot_override(spot_text)
    if asof is not None and file_asof and ny(pd.Timestamp(asof).tz_localize(NEW_YORK)) == file_asof:
        asof = None                     # the file's own time: no override
    if spot is not None and file_spot and f"{spot:.2f}" == file_spot:
        spot = None
    if asof is None and spot is None:
        if error0 is not None:
            st.info("If the file lacks its quote time or its spot, type them in the fields under the uploader "
                    "(sidebar): the quote time in New York time, e.g. 2024-01-05 16:15.")
            raise error0
        chain = chain0
    else:
        chain = data.upload(digest, contents, names, spot, asof)
    return chain, f"Uploaded file: {shown}", (digest, contents, names, spot, asof)


def _snapshot(sb, snaps: list) -> tuple[QuoteChain, str, tuple] | None:
    if not snaps:
        return None
    labels: dict[str, Any] = {}
    for info in snaps:
        label = getattr(info, "label", None) or str(getattr(info, "path", info))
        labels[f"{label} - {str(getattr(info, 'path', info)).split('/')[-1]}"] = info
    options = list(labels)
    if state.get("snapshot") not in labels:
        state.put("snapshot", options[0])
    choice = state.remember("snapshot", sb.selectbox(
        "Saved snapshot", options, **state.keep("snapshot", tuple(options)),
        help="Every successful Yahoo download is saved here; unreadable files are listed, never deleted."))
    info = labels[choice]
    path = str(getattr(info, "path", info))
    try:
        stt = os.stat(path)
        mtime, size = stt.st_mtime, stt.st_size
    except OSError:
        mtime, size = 0.0, 0
    chain = data.snapshot(path, mtime, size)
    return chain, f"Snapshot of {chain.underlying} taken {ny(chain.asof)} New York", (path, mtime, size)


def _yahoo(sb) -> tuple[QuoteChain, str, tuple] | None:
    text = state.remember("ticker", sb.text_input("Ticker", **state.keep("ticker"), placeholder="e.g. SPY, AAPL, ^SPX",
                                                  help="A Yahoo Finance symbol with listed options."))
    if not text.strip():
        st.info("Type a ticker in the sidebar (e.g. SPY), pick expiries and press **Download chain**.")
        st.stop()
    ticker = data.valid_ticker(text)
    if ticker is None:
        st.error(f"**{text.strip()[:20]!r} is not a ticker.** Use letters, digits and . - ^ = only, "
                 "at most 12 characters (e.g. SPY, BRK-B, ^SPX).")
        st.stop()
    try:
        listed = data.yahoo_expiries(ticker)
    except DupireDeskError as exc:
        _fail(exc)
    if not listed:
        _fail(NoOptionsError(f"{ticker} lists no option expiries"))
    picked = state.get("yahoo_pick") or []
    if st.session_state.get("keep.yahoo_for") != ticker or any(e not in listed for e in picked):
        horizon = pd.Timestamp.now().normalize() + pd.Timedelta(days=730)
        state.put("yahoo_pick", [e for e in listed if pd.Timestamp(e) <= horizon][:12])
        st.session_state["keep.yahoo_for"] = ticker
    pick = state.remember("yahoo_pick", sb.multiselect(
        "Expiries to download", listed, **state.keep("yahoo_pick", (ticker, tuple(listed))),
        help="Each expiry is one request to Yahoo; 8-12 expiries take a few seconds."))
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
    return chain, f"Live: Yahoo Finance {ticker}, downloaded {ny(when)} New York", (ticker, str(when))


# ------------------------------------------------------------------------------------------ sidebar
def sidebar() -> Selection:
    """Draw the shared sidebar and return the ``Selection``; stops the page with a message when the
    source cannot deliver or a setting is unusable."""
    state.begin_run()
    sb = st.sidebar
    nav(sb)
    sb.markdown("### Data")
    snaps = data.snapshots()
    sources = [s for s in SOURCES if s != SOURCES[3] or snaps]        # no snapshot choice without snapshots
    if state.get("source") not in sources:
        state.put("source", SOURCES[0])
    source = state.remember("source", sb.radio(
        "Data source", sources, **state.keep("source", tuple(sources)),
        help="The demo market works offline; Yahoo needs a network; uploads stay in this session."))
    kind = {SOURCES[0]: "demo", SOURCES[1]: "yahoo", SOURCES[2]: "upload", SOURCES[3]: "snapshot"}[source]
    loaded = None
    try:
        if kind == "demo":
            loaded = _demo()
        elif kind == "upload":
            loaded = _upload(sb)
            if loaded is None:
                st.info("Upload an option chain in the sidebar: a CBOE delayed-quotes download (one file, or one "
                        "file per expiry of the same day), a yfinance-style CSV or a tidy CSV (expiry, strike, cp, "
                        "bid, ask). Or pick the demo market.")
                st.stop()
        elif kind == "snapshot":
            loaded = _snapshot(sb, snaps)
            if loaded is None:
                st.info("No saved snapshots yet: every successful Yahoo download is saved as one.")
                _offer_fallbacks(st)
                st.stop()
        else:
            loaded = _yahoo(sb)
    except DupireDeskError as exc:
        _fail(exc)
    chain, label, ident = loaded
    key = f"{kind}:{data.chain_digest(chain)}"
    _state_line(sb, chain, label)
    settings = _settings(sb, chain, key, kind, ident)
    return Selection(chain=chain, key=key, kind=kind, label=label, settings=settings, ident=ident)


def _state_line(sb, chain: QuoteChain, label: str) -> None:
    sb.caption(label)
    spot = f"{chain.spot:,.2f}" if chain.spot is not None else "n/a (forwards from parity)"
    asof, market = ny(chain.asof), ny(chain.market_time)
    when = f"quotes at {asof} New York" if asof else "quote time unknown"
    if market and market != asof:
        when += f"  \nT runs from {market} (the last close before)"
    sb.markdown(f"**{chain.underlying or 'unknown'}** · spot {spot}  \n{when}")
    for w in list(chain.meta.get("warnings", []) or [])[:5]:
        sb.warning(str(w))
    if chain.exercise == "american":
        sb.warning("American options: parity forwards are approximate; only out-of-the-money quotes are used.")


def _settings(sb, chain: QuoteChain, key: str, kind: str, ident: tuple) -> pipeline.Settings:
    sb.markdown("### Calibration")
    methods = list(pipeline.METHODS)
    if state.get("method") not in methods:
        state.put("method", pipeline.Settings().method)
    method = state.remember("method", sb.selectbox(
        "Method", methods, format_func=method_label, **state.keep("method", tuple(methods)),
        help="How the implied-vol surface is fitted to the quotes; local vol follows from it by Dupire's formula. "
             "Measured on real SPX and NDX chains:\n\n" + "\n".join(
                 f"- **{method_label(m)}**: {METHOD_GUIDE[m]}" for m in methods if m in METHOD_GUIDE)))
    smoothing = state.remember("smoothing", sb.slider(
        "Smoothing", 0.0, 1.0, step=0.05, **state.keep("smoothing"),
        help="0 follows the quotes as closely as no-arbitrage allows; 1 is strongly regularised."))
    clip = state.remember("clip", sb.slider(
        "Local-vol clip band (%)", 0, state.CLIP_SLIDER_MAX, step=1, **state.keep("clip"),
        help="Local vol outside this band is clipped to it and the cells are flagged."))
    with sb.expander("Rates and quote filters"):
        override = state.remember("rates_override", st.checkbox(
            "Override r and q (else from put-call parity)", **state.keep("rates_override")))
        r = state.remember("r", st.number_input("r (% a year)", -5.0, 20.0, step=0.25, **state.keep("r"),
                                                disabled=not override))
        q = state.remember("q", st.number_input("q, dividend yield (% a year)", -5.0, 20.0, step=0.25,
                                                **state.keep("q"), disabled=not override))
        max_spread = state.remember("max_spread", st.slider(
            "Max spread / mid", 0.05, 2.0, step=0.05, **state.keep("max_spread"),
            help="Quotes with a wider bid/ask relative to the mid are not used."))
        min_vol = state.remember("min_volume", st.number_input("Min volume", 0, 1_000_000, step=1,
                                                               **state.keep("min_volume")))
        min_oi = state.remember("min_oi", st.number_input("Min open interest", 0, 1_000_000, step=1,
                                                          **state.keep("min_oi")))
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
    keys = series.quote_keys(prep.quotes)
    live = prep.quotes["T"].to_numpy(float) > 0
    available = series.sort_keys(k for k in pd.unique(keys[live]) if k)
    default = series.sort_keys(k for k in pd.unique(keys[use_mask(prep.quotes)]) if k)
    labels = series.expiry_labels(available)
    current = state.get("expiries")
    if st.session_state.get("keep.expiries_for") != key or current is None or any(e not in available for e in current):
        state.put("expiries", default)
        st.session_state["keep.expiries_for"] = key
    picked = state.get("expiries") or []
    with sb.expander(f"Expiries to fit: {len(picked)} of {len(available)} series"):
        chosen = state.remember("expiries", st.multiselect(
            "Expiries to fit", available, format_func=lambda k: labels.get(k, k),
            **state.keep("expiries", (key, tuple(available))), label_visibility="collapsed",
            help="Default: every expiry series with enough usable quotes up to 2.5 years. AM-settled (SPX monthly) "
                 "and PM-settled (SPXW) series of one date are separate entries."))
        st.caption("AM-settled (SPX monthly) and PM-settled (SPXW) series of one date are separate entries.")
    sb.caption(settings_line(base))
    if not default and len(chosen) < 2:
        st.warning("No expiry has enough usable quotes with these quote filters: relax max spread, min volume "
                   "or min open interest in the sidebar (see the Data page for the reason of each quote).")
        st.stop()
    if len(chosen) < 2:
        st.warning("Select at least two expiries in the sidebar: local vol needs a term structure.")
        st.stop()
    expiries = None if sorted(chosen) == sorted(default) else data.expiry_choice(chosen)
    return dataclasses.replace(base, expiries=expiries)


def settings_line(s: pipeline.Settings) -> str:
    """The settings in force in one line (what every page computed with)."""
    parts = [method_label(s.method).split(" (")[0], f"smoothing {s.smoothing:.2f}",
             f"clip {100 * s.clip[0]:g}-{100 * s.clip[1]:g}%", f"max spread/mid {s.max_spread_frac:g}"]
    if s.min_volume:
        parts.append(f"min volume {s.min_volume:g}")
    if s.min_open_interest:
        parts.append(f"min OI {s.min_open_interest:g}")
    if s.r is not None:
        parts.append(f"r {100 * s.r:g}%, q {100 * (s.q or 0):g}%")
    return "In force: " + " · ".join(parts)


def chart(fig, key: str, *, name: str | None = None) -> None:
    """Show a Plotly figure with a download of it as a standalone HTML file (built on click)."""
    st.plotly_chart(fig, key=key, config={"displaylogo": False})
    st.download_button("Download chart (HTML)", data=lambda: figure_html(fig),
                       file_name=data.download_name(name or key, ext="html"), mime="text/html",
                       key=f"{key}.html", on_click="ignore")


def page_header(title: str, what: str) -> None:
    """Page setup (wide layout), title and a one-line description of what the page shows."""
    try:
        st.set_page_config(page_title=f"{title} - Dupire Desk" if title != "Dupire Desk" else title, layout="wide")
    except StreamlitAPIException:  # set twice in one run (AppTest switch_page): harmless
        pass
    st.title(title)
    st.caption(what)
