"""Arbitrage: butterfly density g(y, T) and calendar slope dw/dT of the fitted surface, model-free violations
in the raw quotes (legs, cost, whether they survive the bid/ask), and the implied risk-neutral densities."""
import numpy as np
import streamlit as st

from core.cleaning import used
from ui import controls, data, figures, messages, series

controls.page_header("Arbitrage", "Static arbitrage in the fitted surface (negative g = butterfly, negative dw/dT = "
                     "calendar) and in the raw quotes; the risk-neutral density each expiry implies.")


MAX_ROWS = 1000

with messages.page_guard():
    sel = controls.sidebar()
    prep = sel.run(data.prepared)
    fr = sel.run(data.fitted)
    sarb, viol = sel.run(data.arbitrage)

    y, T, g, wT, bf, cal = sarb.y, sarb.T, sarb.g, sarb.w_T, sarb.butterfly, sarb.calendar
    c = st.columns(4)
    c[0].metric("Butterfly cells (g < 0)", f"{int(bf.sum()):,} / {g.size:,}")
    c[1].metric("Calendar cells (dw/dT < 0)", f"{int(cal.sum()):,} / {wT.size:,}")
    n_v = 0 if viol is None else len(viol)
    surv = 0 if viol is None or "survives_spread" not in viol else int(viol["survives_spread"].astype(bool).sum())
    c[2].metric("Violations in raw quotes", f"{n_v:,}", help="at mid prices or through the bid/ask, each expiry "
                "series checked on its own")
    c[3].metric("...executable through bid/ask", f"{surv:,}")

    left, right = st.columns(2)
    with left:
        controls.chart(figures.heatmap(y, T, g, title="Butterfly: g(y, T) (negative = arbitrage)", zlabel="g",
                                       xlabel="y = ln(K/F)", percent=False, zmid=0.0, fmt=".3f",
                                       colorscale=figures.DIVERGING_SCALE, flags={"butterfly": bf}),
                       key="arbitrage.g", name="butterfly_g")
    with right:
        controls.chart(figures.heatmap(y, T, wT, title="Calendar: dw/dT (negative = arbitrage)", zlabel="dw/dT",
                                       xlabel="y = ln(K/F)", percent=False, zmid=0.0, fmt=".4f",
                                       colorscale=figures.DIVERGING_SCALE, flags={"calendar": cal}),
                       key="arbitrage.wT", name="calendar_wT")

    st.markdown("#### Model-free violations in the raw quotes (each expiry series on its own)")
    if viol is None or len(viol) == 0:
        st.success("No vertical, butterfly or calendar violations among the quotes of any expiry series.")
    else:
        q = prep.quotes
        qlabel = series.quote_labels(q)
        if "culprit" in viol and surv:
            ex = viol[viol["survives_spread"].astype(bool)]
            blame = ex.groupby("culprit").agg(violations=("kind", "size"), worst_cost=("cost", "min")).reset_index()
            rows = blame["culprit"].to_numpy()
            sus = q.loc[rows, ["strike", "cp", "bid", "ask", "reason"]].reset_index(drop=True)
            sus.insert(0, "expiry", qlabel.loc[rows].to_numpy())
            sus.insert(0, "series", series.series_name(q.loc[rows]).to_numpy())
            sus.insert(0, "violations explained", blame["violations"].to_numpy())
            sus["worst cost"] = blame["worst_cost"].to_numpy()
            sus["strike"] = sus["strike"].map(series.fmt_strike)
            sus["cp"] = sus["cp"].map({1: "C", -1: "P"})
            st.markdown(f"**{surv:,} executable violations are explained by {len(sus)} suspect quote(s)** (each "
                        "violation is blamed on the quote that appears in the most of them); `reason` is what "
                        "cleaning already said of that quote.")
            st.dataframe(sus.sort_values("violations explained", ascending=False), hide_index=True, width="stretch")
        if not surv:
            st.success(f"No violation survives the bid/ask: the {n_v:,} listed exist only at mid prices (a mid is "
                       "not a price anyone trades at; most are within a tick).")
        kinds = sorted(viol["kind"].astype(str).unique())
        c1, c2, c3 = st.columns([2, 2, 2])
        pick = c1.multiselect("Kinds", kinds, default=kinds, key="arbitrage.kinds")
        all_series = sorted(viol["series"].astype(str).unique()) if "series" in viol else []
        pick_s = c2.multiselect("Series", all_series, default=all_series, key="arbitrage.series")
        only = c3.checkbox("Only those that survive the bid/ask (executable)", key="arbitrage.only_exec")
        v = viol[viol["kind"].astype(str).isin(pick)]
        if all_series:
            v = v[v["series"].astype(str).isin(pick_s)]
        if only and "survives_spread" in v:
            v = v[v["survives_spread"].astype(bool)]
        cols = [c for c in ("kind", "rule", "series", "expiry", "expiry2", "strikes", "legs", "package_cost", "cost",
                            "mid_cost", "survives_spread", "size_ratio") if c in v.columns]
        # the browser gets the first MAX_ROWS (executable first, the largest first); the download has them all
        st.dataframe(v[cols].head(MAX_ROWS), hide_index=True, width="stretch", height=320, column_config={
            "series": st.column_config.TextColumn("series", help="root and settlement of every leg (one series per row)"),
            "expiry2": st.column_config.TextColumn("expiry 2", help="the longer expiry of a calendar spread"),
            "strikes": st.column_config.TextColumn("strikes", help="as quoted, in the order of the legs"),
            "legs": st.column_config.TextColumn("legs (whole contracts)", width="large"),
            "package_cost": st.column_config.NumberColumn("cost of the legs", format="%.2f",
                                                          help="at bid/ask for the whole contracts shown"),
            "cost": st.column_config.NumberColumn("cost per unit", format="%.4f"),
            "mid_cost": st.column_config.NumberColumn("cost at mids", format="%.4f"),
            "survives_spread": st.column_config.CheckboxColumn("executable"),
            "size_ratio": st.column_config.TextColumn("sizes", help="exact: the smallest whole-contract ratio; "
                                                      "rounded: a calendar's forward-ratio sizes in 10s, long legs "
                                                      "rounded up and short legs down (never overstates)"),
        })
        shown = f"The first {MAX_ROWS:,} of {len(v):,} are listed; the download has them all. " if len(v) > MAX_ROWS else ""
        st.caption(shown + "Checked within each expiry series: SPX (AM-settled) and SPXW (PM-settled) options of one "
                   "date are never legs of one violation. Cost: what the legs cost at executable prices (buy at the ask, "
                   "sell at the bid); a negative cost that survives the spread is money for nothing, usually a "
                   "stale quote.")
        st.download_button("Violations (CSV)", data=lambda: data.safe_csv(v[cols]), mime="text/csv", on_click="ignore",
                           file_name=data.download_name(sel.chain.underlying, "violations", ext="csv"),
                           key="arbitrage.dl_violations")

    st.markdown("#### Risk-neutral density per expiry (Breeden-Litzenberger, from the fitted surface)")
    uq = used(prep.quotes)
    Te = series.key_times(uq)
    dlabels = series.expiry_labels(Te.index)
    K = np.linspace(*np.quantile(uq["strike"], [0.0, 1.0]), 401)
    dens = data.density(fr.surface, prep.forwards, K, Te.to_numpy(float))
    mass = np.trapezoid(np.nan_to_num(dens), K, axis=1)
    # at most a dozen curves (evenly spread over the expiries, always the first and the last), on the strikes
    # where the drawn curves are visibly above zero: 50 overlapping curves over strikes 1,000-9,000 say nothing
    shown = sorted({int(round(i)) for i in np.linspace(0, len(Te) - 1, min(12, len(Te)))})
    sub = np.nan_to_num(dens[shown])
    visible = sub > 0.05 * sub.max(axis=1, keepdims=True)     # where a drawn curve is above 5% of its own peak
    cols = np.flatnonzero(visible.any(axis=0))
    lo_k, hi_k = (K[cols[0]], K[cols[-1]]) if cols.size else (K[0], K[-1])
    fig = figures.densities(K, [dlabels[Te.index[i]] for i in shown], dens[shown])
    if hi_k > lo_k:
        fig.update_xaxes(range=[lo_k, hi_k])
    controls.chart(fig, key="arbitrage.density", name="densities")
    low = [f"{dlabels[k]} {m:.2f}" for k, m in zip(Te.index, mass, strict=True) if m < 0.95]
    st.caption(f"{len(shown)} of {len(Te)} expiries drawn (evenly spread); the mass check covers all. Density p(K) = "
               "(d2C/dK2) / D from the fitted surface (closed form in total variance); negative density would be "
               "butterfly arbitrage (drawn in red). Mass within the quoted strikes is "
               + (f"below 0.95 for: {', '.join(low)}." if low else "at least 0.95 for every expiry."))
