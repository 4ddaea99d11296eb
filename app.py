"""Dupire Desk: the landing page (what the app does, the data's state, the calibration in numbers).

Run with ``streamlit run app.py`` (``make run``). Pages in ``pages/`` share the sidebar of
``ui.controls``; every computation is a cached call into ``core`` (``ui.data``).
"""
import numpy as np
import streamlit as st

from ui import controls, data, messages, series

controls.page_header(
    "Dupire Desk",
    "Option quotes -> cleaned quotes and parity forwards -> implied vols -> arbitrage-free implied surface "
    "-> Dupire local vol -> repricing, with the evidence to trust each step.")

with messages.page_guard():
    sel = controls.sidebar()
    prep = sel.run(data.prepared)
    fr = sel.run(data.fitted)
    lv = sel.run(data.local_vol)

    q = prep.quotes
    used = int(q["use"].astype(bool).sum())
    rmse = [v for v in fr.rmse_bp.values() if v is not None and np.isfinite(v)]
    inside = [v for v in fr.inside_share.values() if v is not None and np.isfinite(v)]
    counts = lv.counts
    cells = int(counts.get("cells", lv.local_vol.size))
    flagged = int(np.sum(lv.clipped_low | lv.clipped_high | lv.butterfly | lv.calendar))

    st.subheader(f"{sel.chain.underlying}: {sel.label}")
    c = st.columns(5)
    c[0].metric("Quotes used", f"{used:,}", help=f"of {len(q):,} loaded; the Data page gives the reason for each")
    c[1].metric("Expiry series fitted", f"{series.quote_keys(q[q['use'].astype(bool)]).nunique()}",
                help="AM-settled (SPX monthly) and PM-settled (SPXW) series of one date count as two")
    c[2].metric("Fit error (median RMSE)", f"{np.median(rmse):.1f} bp" if rmse else "n/a",
                help="Root-mean-square of fitted minus mid implied vol per expiry, in vol basis points.")
    c[3].metric("Fit inside bid/ask", f"{100 * np.mean(inside):.0f}%" if inside else "n/a")
    c[4].metric("Local-vol cells flagged", f"{flagged:,} / {cells:,}",
                help="Clipped to the band, butterfly (g < 0) or calendar (dw/dT < 0) arbitrage.")
    notes = [str(w) for w in (getattr(fr, "warnings", []) or [])]
    if notes:
        with st.expander(f"Fit notes ({len(notes)}): where the surface and the quotes disagree"):
            st.markdown("\n".join(f"- {n}" for n in notes))

    st.markdown("#### Pages")
    st.page_link("pages/1_Surfaces.py", label="Surfaces: implied and local vol as heatmaps (3D on demand), flags marked")
    st.page_link("pages/2_Smiles.py", label="Smiles: quotes, fit and local vol per expiry; the rules of thumb")
    st.page_link("pages/3_Arbitrage.py", label="Arbitrage: g(y, T), dw/dT, violations in the raw quotes, densities")
    st.page_link("pages/4_Validation.py", label="Validation & pricing: the round trip, exotics, scenarios")
    st.page_link("pages/5_Data.py", label="Data & export: every quote with its reason code; downloads")
    st.page_link("pages/6_Risk.py", label="Risk: Greeks under local vol, bucketed vega, skew and term sensitivities")
    st.caption("Settings in the sidebar apply to every page and are kept when you switch pages. "
               "Results are cached: going back to a setting is instant.")
