"""Surfaces: implied and local vol side by side, in 3D and as heatmaps, with the flagged cells marked."""
import numpy as np
import streamlit as st

from core.cleaning import use_mask
from ui import controls, data, figures, messages, state

controls.page_header("Surfaces", "Implied vol (the fitted surface) and Dupire local vol on the same grid, as heatmaps "
                     "with the flagged cells marked; a rotatable 3D view on demand (market quotes as dots). Hover "
                     "for strike, expiry, vols and flags.")

VIEWS_3D = ("Off", "Implied vol", "Local vol")

with messages.page_guard():
    sel = controls.sidebar()
    prep = sel.run(data.prepared)
    lv = sel.run(data.local_vol)

    c1, c2, c3 = st.columns([2, 3, 3])
    axis = state.remember("surfaces.axis", c1.radio("Horizontal axis", ["Strike", "Moneyness K/S"], horizontal=True,
                                                    **state.keep("surfaces.axis")))
    view3d = state.remember("surfaces.view3d", c2.radio(
        "3D surface", VIEWS_3D, horizontal=True, **state.keep("surfaces.view3d"),
        help="A rotatable 3D view under the heatmaps. Off by default: a 3D chart takes a second or two to draw "
             "where the browser has no graphics card (a heatmap takes a tenth of that)."))
    show_extrap = state.remember("surfaces.extrapolated", c3.checkbox(
        "Show extrapolated cells (beyond the quoted strikes and expiries)", **state.keep("surfaces.extrapolated")))
    ref = sel.chain.spot if sel.chain.spot else float(np.asarray(prep.forwards.F(lv.T[0])))
    moneyness = axis != "Strike"
    x = lv.K / ref if moneyness else lv.K
    xlabel = "K/S" if moneyness else "strike"
    used = prep.quotes[use_mask(prep.quotes) & np.isfinite(prep.quotes["iv_mid"]).to_numpy()]
    qx = used["strike"].to_numpy(float) / (ref if moneyness else 1.0)
    # Quotes outside the plotted strike range would stretch the axes: keep those on the grid.
    on = (used["strike"] >= lv.K.min()) & (used["strike"] <= lv.K.max())
    points = {"x": qx[on.to_numpy()], "T": used["T"].to_numpy(float)[on.to_numpy()],
              "iv": used["iv_mid"].to_numpy(float)[on.to_numpy()]}
    flags = {f: np.asarray(getattr(lv, f), bool) for f in figures.FLAG_STYLE}
    iv, loc = np.array(lv.iv, float), np.array(lv.local_vol, float)
    # the implied-vol charts' hover names the unclipped local vol: it does not depend on the clip band, so a
    # clip change leaves those two charts byte for byte the same (Streamlit then keeps them, no redraw)
    raw = np.array(lv.local_vol_raw, float)
    if not show_extrap:
        # Far outside the quotes a short expiry's wings explode; hiding them keeps the colour scale useful.
        iv[flags["extrapolated"]] = np.nan
        loc[flags["extrapolated"]] = np.nan
        raw[flags["extrapolated"]] = np.nan
        flags_shown = {f: m & ~flags["extrapolated"] for f, m in flags.items() if f != "extrapolated"}
    else:
        flags_shown = flags
    # one colour scale each, from percentiles: a local-vol spike must not wash out the implied-vol map
    zr_iv = figures.robust_range(iv)
    zr_lv = figures.robust_range(loc, within=lv.clip)

    n = loc.size
    counts = {f: int(np.sum(flags[f])) for f in flags}
    st.caption(f"{controls.method_label(sel.settings.method)}, smoothing {sel.settings.smoothing:.2f}; "
               f"{lv.T.size} x {lv.K.size} grid, clip band {100 * lv.clip[0]:.0f}%-{100 * lv.clip[1]:.0f}%. "
               + ", ".join(f"{figures.FLAG_STYLE[f][0]}: {c} ({100 * c / n:.1f}%)" for f, c in counts.items()))

    left, right = st.columns(2)
    with left:
        controls.chart(figures.heatmap(x, lv.T, iv, title="Implied vol (fitted)", zlabel="implied vol",
                                       xlabel=xlabel, other=("local vol (unclipped)", raw),
                                       colorscale=figures.IMPLIED_SCALE, zrange=zr_iv),
                       key="surfaces.implied_heat", name="implied_vol_heatmap")
    with right:
        controls.chart(figures.heatmap(x, lv.T, loc, title="Dupire local vol (clipped), flags marked",
                                       zlabel="local vol", xlabel=xlabel, flags=flags_shown,
                                       other=("implied vol", iv), colorscale=figures.LOCAL_SCALE, zrange=zr_lv,
                                       band=lv.clip),
                       key="surfaces.local_heat", name="local_vol_heatmap")
    if view3d == VIEWS_3D[1]:
        controls.chart(figures.surface_3d(x, lv.T, iv, title="Implied vol (fitted) and market quotes",
                                          zlabel="implied vol", xlabel=xlabel, points=points,
                                          other=("local vol (unclipped)", raw), colorscale=figures.IMPLIED_SCALE,
                                          zrange=zr_iv, height=620), key="surfaces.implied3d", name="implied_vol_3d")
    elif view3d == VIEWS_3D[2]:
        controls.chart(figures.surface_3d(x, lv.T, loc, title="Dupire local vol (clipped), flags marked",
                                          zlabel="local vol", xlabel=xlabel, flags=flags_shown,
                                          other=("implied vol", iv), colorscale=figures.LOCAL_SCALE,
                                          zrange=zr_lv, band=lv.clip, height=620),
                       key="surfaces.local3d", name="local_vol_3d")
    st.caption("Colours: implied and local vol each have their own scale, from the 2nd to the 98th percentile of "
               "what is shown (values beyond take the end colours); the local-vol colour bar names the clip band. "
               "Flags: clipped = the raw Dupire value lies outside the clip band (shown at the band's edge); "
               "butterfly = the fitted smile implies a negative density there; calendar = total variance falls "
               "with maturity; extrapolated = outside the quoted strikes or expiries.")
