"""Risk: price and Greeks of one product under local vol and Black-Scholes, spot deltas under three dynamics, parallel
and bucketed vega, skew/term sensitivities and the PDE's convergence; CSV exports."""
import numpy as np
import streamlit as st

from core.cleaning import used as core_used
from core.pricing.products import BARRIER_KINDS
from ui import controls, data, messages
from ui import risk as rk

controls.page_header("Risk", "Greeks of one product under the calibrated local vol, next to Black-Scholes at its "
                     "market implied vol; where its vega sits on the surface (expiry x strike buckets).")

with messages.page_guard():
    sel = controls.sidebar()
    prep = sel.run(data.prepared)
    used = core_used(prep.quotes)
    data.ensure(len(used) > 0, "no usable quotes: widen the quote filters in the sidebar")
    spot = float(sel.chain.spot) if sel.chain.spot else float(np.asarray(prep.forwards.F(1e-6)))
    fitted_T = np.sort(used["T"].unique())
    american = sel.chain.exercise == "american"
    choices = list(rk.PRODUCTS) if american else [p for p in rk.PRODUCTS if p != "American vanilla"]
    default_T = float(fitted_T[np.argmin(np.abs(fitted_T - 0.5))])

    with st.form("risk.form"):
        c = st.columns(6)
        kind = c[0].selectbox("Product", choices, key="risk.product",
                              help="American vanilla appears when the chain is American (e.g. SPY, QQQ)")
        cp = c[1].selectbox("Call / put", ["call", "put"], key="risk.cp")
        strike_pct = c[2].number_input("Strike (% of spot)", 50.0, 150.0, value=100.0, step=1.0, key="risk.strike")
        T = c[3].selectbox("Expiry (years, fitted expiries)", [round(float(t), 4) for t in fitted_T],
                           index=int(np.argmin(np.abs(fitted_T - default_T))), key="risk.T")
        bkind = c[4].selectbox("Barrier type", list(BARRIER_KINDS), key="risk.kind", help="Barrier only")
        barrier_pct = c[5].number_input("Barrier (% of spot)", 50.0, 200.0, value=115.0, step=1.0, key="risk.barrier",
                                        help="Barrier only")
        c2 = st.columns(3)
        n_expiry = c2[0].slider("Expiry buckets", 4, 16, value=10, key="risk.n_expiry")
        full_check = c2[1].checkbox("Check the parallel vega by a full refit", value=False, key="risk.full",
                                    help="One more surface fit (about a second on a real chain)")
        st.form_submit_button("Compute risk")

    cpi = 1 if cp == "call" else -1
    product = rk.make_product(kind, cpi, round(spot * strike_pct / 100, 4), float(T),
                              barrier=round(spot * barrier_pct / 100, 4) if kind == "Barrier" else None,
                              barrier_kind=bkind)
    st.markdown(f"**{product.label}** (spot {spot:,.2f})")

    g = sel.run(rk.greeks, product)
    lv_row, bs_row = g.row("local vol"), g.row("Black-Scholes")
    c = st.columns(5)
    c[0].metric("Price, local vol", f"{lv_row['price']:,.3f}",
                help=f"standard error {lv_row['price_se']:.3f}" if "price_se" in lv_row else None)
    c[1].metric("Price, Black-Scholes", f"{bs_row['price']:,.3f}", help=f"at the market implied vol {g.iv:.2%}")
    c[2].metric("Delta, local vol", f"{lv_row['delta']:.4f}")
    c[3].metric("Gamma, local vol", f"{lv_row['gamma']:.3g}")
    c[4].metric("Theta, local vol (per year)", f"{lv_row['theta']:,.2f}" if np.isfinite(lv_row["theta"]) else "n/a")

    st.markdown("#### Price and Greeks: local vol under three dynamics, and Black-Scholes")
    gf = rk.greeks_frame(g)
    st.dataframe(gf, hide_index=True, width="stretch",
                 column_config={k: st.column_config.NumberColumn(format="%.5g") for k in gf.columns if k != "dynamics"})
    st.caption("Local vol: the model's own dynamics (delta, gamma, theta from the backward PDE's grid). Sticky strike: "
               "each strike keeps its implied vol when spot moves; sticky moneyness: each K/F keeps it; both "
               f"recompute local vol and reprice (spot +-{g.bump:.0%}). {g.method}. {g.seconds:.2f} s.")
    st.download_button("Greeks (CSV)", data=data.safe_csv(gf), mime="text/csv", key="risk.greeks_csv",
                       file_name=data.download_name("greeks", kind, cp, ext="csv"))

    st.markdown("#### Vega: parallel and by bucket")
    v = sel.run(rk.vega, product, int(n_expiry), bool(full_check))
    left, right = st.columns([3, 1])
    with right:
        st.dataframe(rk.vega_table(v), hide_index=True, width="stretch",
                     column_config={"value": st.column_config.NumberColumn(format="%.4g")})
        sh = sel.run(rk.shape, product)
        st.markdown("Skew and term (per 0.01)")
        st.dataframe(rk.shape_frame(sh), hide_index=True, width="stretch",
                     column_config={"value": st.column_config.NumberColumn(format="%.4g")})
    with left:
        if np.isfinite(v.bucket_sum):
            controls.chart(rk.vega_heatmap(v), key="risk.vega_heatmap", name="bucketed_vega")
        else:
            st.info("Bucketed vega is computed for the PDE products (vanilla, American, barrier); an Asian is priced "
                    "by Monte Carlo, which shows its parallel vega with a standard error.")
    st.caption(f"Refit: {v.refit}. Bump {v.bump * 100:g} vol point scaled to one point; local vol recomputed and "
               f"the product repriced per bucket. {len(v.buckets)} buckets, {v.seconds:.2f} s.")
    if np.isfinite(v.bucket_sum):
        st.download_button("Vega buckets (CSV)", data=data.safe_csv(v.frame()), mime="text/csv",
                           key="risk.vega_csv", file_name=data.download_name("vega_buckets", kind, cp, ext="csv"))

    conv = sel.run(rk.convergence, product)
    if conv is not None:
        st.markdown("#### PDE convergence: price and delta at two grid sizes")
        st.dataframe(conv, hide_index=True, width="stretch",
                     column_config={k: st.column_config.NumberColumn(format="%.6g") for k in conv.columns})
        st.caption("Second order: the coarser grid's error is about 4/3 of the change between the rows.")
