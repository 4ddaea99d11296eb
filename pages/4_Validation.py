"""Validation & pricing: the round trip (repriced minus market, vol bp, against bid/ask), exotics under local
vol vs Black-Scholes, scenario shocks before/after."""
import numpy as np
import pandas as pd
import streamlit as st

from core.cleaning import use_mask, used
from core.pricing import products
from core.pricing.scenarios import Scenario
from ui import controls, data, figures, messages, series

controls.page_header("Validation & pricing", "Does the local vol give back the market? Every fitted quote repriced "
                     "by the forward Dupire PDE; then exotics priced under local vol and under Black-Scholes.")

with messages.page_guard():
    sel = controls.sidebar()
    prep = sel.run(data.prepared)
    rp = sel.run(data.repriced)

    st.markdown("#### Round trip: repriced minus market implied vol")
    t = rp.table
    ok = np.isfinite(t["error_bp"].to_numpy(float))
    ok &= use_mask(t)
    t = t[ok]
    half = (t["iv_ask"].to_numpy(float) - np.nan_to_num(t["iv_bid"].to_numpy(float), nan=0.0)) * 1e4 / 2
    c = st.columns(4)
    c[0].metric("Quotes repriced", f"{rp.n:,}", help=f"{rp.n_failed} without a model implied vol")
    c[1].metric("Inside bid/ask", f"{100 * rp.inside_bid_ask:.0f}%")
    c[2].metric("Mean |error|", f"{rp.mean_bp:.1f} bp")
    c[3].metric("Max |error|", f"{rp.max_bp:.1f} bp")
    left, right = st.columns([3, 2])
    with left:
        xm = t["strike"].to_numpy(float) / t["F"].to_numpy(float) if "F" in t else t["strike"].to_numpy(float)
        keys = series.quote_keys(t)
        labels = series.expiry_labels(series.sort_keys(k for k in pd.unique(keys) if k))
        rows = keys.map(lambda k: labels.get(k, k)).to_numpy()
        order = [labels[k] for k in series.sort_keys(labels)]
        controls.chart(figures.roundtrip(xm, rows, t["error_bp"], half, xlabel="K/F" if "F" in t else "strike",
                                         title="Repriced - market (vol bp); ringed: outside the bid/ask band",
                                         row_order=order),
                       key="validation.roundtrip", name="round_trip")
    with right:
        be = rp.by_expiry.copy()
        if "T" in be:
            bkeys = series.keys_for_T(prep.quotes, be["T"].to_numpy(float))
            be["expiry"] = [labels.get(k, k) for k in bkeys]
        st.markdown("Per expiry")
        st.dataframe(be, hide_index=True, width="stretch",
                     column_config={"T": st.column_config.NumberColumn(format="%.3f"),
                                    "max_bp": st.column_config.NumberColumn("max |err| bp", format="%.1f"),
                                    "mean_bp": st.column_config.NumberColumn("mean |err| bp", format="%.1f"),
                                    "inside_bid_ask": st.column_config.NumberColumn("inside", format="percent")})
        st.caption("Model: forward Dupire PDE under the clipped local vol, one sweep for all quotes. "
                   "A quote is inside when the model's implied vol lies within its bid/ask vols.")

    if prep.american is not None:  # an American chain: the American quotes themselves, early exercise included
        arp = sel.run(data.repriced_american)
        st.markdown("#### American round trip: the American quotes priced with early exercise")
        c = st.columns(3)
        c[0].metric("American quotes repriced", f"{arp.n:,}", help=f"{arp.n_failed} without a price")
        c[1].metric("Inside American bid/ask", f"{100 * arp.inside_bid_ask:.0f}%")
        c[2].metric("Seconds", f"{arp.seconds:.1f}")
        st.dataframe(arp.by_expiry, hide_index=True, width="stretch",
                     column_config={"T": st.column_config.NumberColumn(format="%.3f"),
                                    "inside_bid_ask": st.column_config.NumberColumn("inside", format="percent"),
                                    "mean_abs_half_spreads": st.column_config.NumberColumn(
                                        "mean |error| (half spreads)", format="%.2f")})
        st.caption("Model: backward PDE under the same local vol with the carry implied from the quotes, early "
                   "exercise by projection; the European part from the forward sweep, the early-exercise premium "
                   "from the backward grid (a control variate). The round trip above prices the European "
                   "equivalents the surface was fitted to.")

    st.markdown("#### Exotics: local vol vs Black-Scholes (same random numbers)")
    spot = float(sel.chain.spot) if sel.chain.spot else float(np.asarray(prep.forwards.F(1e-6)))
    Tmax = float(used(prep.quotes)["T"].max())
    with st.form("validation.exotic_form"):
        c = st.columns(6)
        product = c[0].selectbox("Product", ["Barrier", "Asian"], key="validation.product")
        kind = c[1].selectbox("Barrier type", ["up-and-out", "down-and-out", "up-and-in", "down-and-in"],
                              key="validation.kind", help="Ignored for the Asian")
        cp = c[2].selectbox("Call / put", ["call", "put"], key="validation.cp")
        strike_pct = c[3].number_input("Strike (% of spot)", 50.0, 150.0, value=100.0, step=1.0, key="validation.strike")
        barrier_pct = c[4].number_input("Barrier (% of spot)", 50.0, 200.0, value=120.0, step=1.0, key="validation.barrier")
        T = c[5].number_input("Maturity (years)", 0.05, max(0.06, round(Tmax, 2)), value=min(1.0, round(Tmax, 2)),
                              step=0.05, key="validation.T")
        n_paths = st.select_slider("Monte Carlo paths", [5_000, 10_000, 20_000, 50_000, 100_000], value=20_000,
                                   key="validation.paths")
        st.form_submit_button("Price")
    cpi = 1 if cp == "call" else -1
    if product == "Barrier":
        terms = products.Barrier(strike=spot * strike_pct / 100, T=float(T), barrier=spot * barrier_pct / 100,
                                 kind=kind, cp=cpi)
    else:
        terms = products.Asian(strike=spot * strike_pct / 100, T=float(T), n_fixings=12, cp=cpi)
    res = sel.run(data.exotic, terms, int(n_paths))
    c = st.columns(4)
    c[0].metric("Local vol", f"{res.price_lv:,.2f}", help=f"standard error {res.se_lv:.3f}")
    c[1].metric("Black-Scholes", f"{res.price_bs:,.2f}", help=f"ATM implied vol {100 * res.atm_vol:.2f}%")
    c[2].metric("Smile value (LV - BS)", f"{res.smile_value:,.2f}", help=f"paired standard error {res.se_smile:.3f}")
    c[3].metric("Vanilla check (LV / BS)", f"{res.vanilla_lv:,.2f} / {res.vanilla_bs:,.2f}")
    label = f"{product.lower()} {kind if product == 'Barrier' else ''} {cp} K={strike_pct:.0f}%".replace("  ", " ")
    controls.chart(figures.compare_bars([label, "vanilla (same strike)"],
                                        {"local vol": [res.price_lv, res.vanilla_lv],
                                         "Black-Scholes (ATM vol)": [res.price_bs, res.vanilla_bs]},
                                        errors={"local vol": [res.se_lv, 0.0], "Black-Scholes (ATM vol)": [res.se_bs, 0.0]},
                                        title="Price under local vol vs Black-Scholes (bars: 2 standard errors)",
                                        yaxis="price"), key="validation.exotic", name="exotic_prices")
    st.caption(f"{res.n_paths:,} paths, {res.n_steps} steps, {res.seconds:.1f} s. Black-Scholes uses the local-vol "
               "model's own at-the-forward implied vol at the maturity: the two agree on a vanilla struck at the "
               "forward; away from it the vanilla gap is the smile between the strike and the forward.")

    st.markdown("#### Scenario shock: before and after")
    with st.form("validation.scenario_form"):
        c = st.columns(5)
        parallel = c[0].number_input("Parallel (vol points)", -20.0, 50.0, value=2.0, step=0.5, key="validation.parallel")
        skew = c[1].number_input("Skew tilt (vol points per unit y)", -50.0, 50.0, value=0.0, step=1.0,
                                 key="validation.skew", help="Adds skew x y to the vol: negative steepens a put skew")
        term = c[2].number_input("Short-end shock (vol points)", -20.0, 50.0, value=0.0, step=0.5, key="validation.term",
                                 help="Scaled by sqrt(T_ref/T): more at the short end")
        spot_move = c[3].number_input("Spot move (%)", -50.0, 50.0, value=0.0, step=1.0, key="validation.spot")
        sticky = c[4].selectbox("Smile follows", ["moneyness", "strike"], key="validation.sticky")
        st.form_submit_button("Apply shock")
    fitted_T = np.sort(used(prep.quotes)["T"].unique())
    pick_T = tuple(float(fitted_T[i]) for i in sorted({int(round(j)) for j in np.linspace(0, len(fitted_T) - 1, 5)}))
    strikes = tuple(round(spot * m, 2) for m in (0.8, 0.9, 1.0, 1.1, 1.2))
    shock = Scenario(name="shock", parallel=parallel / 100, skew=skew / 100, term=term / 100,
                     spot_move=spot_move / 100, sticky=sticky)
    sr = sel.run(data.scenario, shock, terms, strikes, pick_T)
    left, right = st.columns(2)
    with left:
        lvt = sr.local_vol
        controls.chart(figures.before_after(lvt["T"], lvt["atm_lv_before"], lvt["atm_lv_after"],
                                            title="ATM local vol before / after the shock", xlabel="T (years)",
                                            yaxis="local vol (%)"), key="validation.scenario_lv", name="scenario_atm_lv")
    with right:
        ex = sr.exotics
        if len(ex):
            row = ex.iloc[0]
            controls.chart(figures.compare_bars([label], {"before": [row["price_before"]], "after": [row["price_after"]]},
                                                errors={"before": [row["se_before"]], "after": [row["se_after"]]},
                                                title="The exotic above under local vol, before / after",
                                                yaxis="price"), key="validation.scenario_exotic", name="scenario_exotic")
    v = sr.vanillas
    piv = v.assign(moneyness=(v["strike"] / spot).round(2)).pivot_table(index="T", columns="moneyness", values="d_price")
    st.markdown("Vanilla price change (after - before), rows: T (years), columns: K/S")
    st.dataframe(piv.style.format("{:+.2f}"), width="stretch")
    st.caption(f"Local vol re-run for the shocked surface ({sr.lv_source}); exotic by Monte Carlo with 10,000 paths; "
               f"{sr.seconds:.1f} s.")
