"""Arbitrage: butterfly density g(y, T) and calendar slope dw/dT of the fitted surface, model-free violations
in the raw quotes (legs, cost, whether they survive the bid/ask), and the implied risk-neutral densities."""
import numpy as np
import streamlit as st

from ui import controls, data, figures, messages

controls.page_header("Arbitrage", "Static arbitrage in the fitted surface (negative g = butterfly, negative dw/dT = "
                     "calendar) and in the raw quotes; the risk-neutral density each expiry implies.")


def _grid_of(obj, *names):
    for n in names:
        v = getattr(obj, n, None)
        if v is not None:
            return np.asarray(v)
    return None


with messages.page_guard():
    sel = controls.sidebar()
    prep = sel.run(data.prepared)
    fr = sel.run(data.fitted)
    sarb, viol = sel.run(data.arbitrage)

    y = _grid_of(sarb, "y", "y_grid")
    T = _grid_of(sarb, "T", "T_grid")
    g = _grid_of(sarb, "g")
    wT = _grid_of(sarb, "w_T", "wT", "dw_dT")
    if y is not None and y.ndim == 2:
        y = y[0]
    bf = np.asarray(getattr(sarb, "butterfly", g < 0), bool)
    cal = np.asarray(getattr(sarb, "calendar", wT < 0), bool)
    c = st.columns(4)
    c[0].metric("Butterfly cells (g < 0)", f"{int(bf.sum()):,} / {g.size:,}")
    c[1].metric("Calendar cells (dw/dT < 0)", f"{int(cal.sum()):,} / {wT.size:,}")
    n_v = 0 if viol is None else len(viol)
    surv = 0 if viol is None or "survives_spread" not in viol else int(viol["survives_spread"].astype(bool).sum())
    c[2].metric("Violations in raw quotes", f"{n_v:,}")
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

    st.markdown("#### Model-free violations in the raw quotes")
    if viol is None or len(viol) == 0:
        st.success("No vertical, butterfly or calendar violations among the quotes.")
    else:
        if "culprit" in viol and surv:
            ex = viol[viol["survives_spread"].astype(bool)]
            blame = ex.groupby("culprit").agg(violations=("kind", "size"), worst_cost=("cost", "min")).reset_index()
            q = prep.quotes
            sus = q.loc[blame["culprit"].to_numpy(), ["expiry", "strike", "cp", "bid", "ask", "reason"]].reset_index(drop=True)
            sus.insert(0, "violations explained", blame["violations"].to_numpy())
            sus["worst cost"] = blame["worst_cost"].to_numpy()
            sus["expiry"] = sus["expiry"].dt.strftime("%Y-%m-%d")
            sus["cp"] = sus["cp"].map({1: "C", -1: "P"})
            st.markdown(f"**{surv:,} executable violations are explained by {len(sus)} suspect quote(s)** (each "
                        "violation is blamed on the quote that appears in the most of them); `reason` is what "
                        "cleaning already said of that quote.")
            st.dataframe(sus.sort_values("violations explained", ascending=False), hide_index=True, width="stretch")
        kinds = sorted(viol["kind"].astype(str).unique())
        pick = st.multiselect("Kinds", kinds, default=kinds, key="arbitrage.kinds")
        only = st.checkbox("Only those that survive the bid/ask (executable)", key="arbitrage.only_exec")
        v = viol[viol["kind"].astype(str).isin(pick)]
        if only and "survives_spread" in v:
            v = v[v["survives_spread"].astype(bool)]
        v = v.assign(expiry=v["expiry"].dt.strftime("%Y-%m-%d"),
                     expiry2=v["expiry2"].dt.strftime("%Y-%m-%d")) if hasattr(v["expiry"], "dt") else v
        st.dataframe(v, hide_index=True, width="stretch", height=300)
        st.caption("cost: what the legs cost at executable prices (buy at the ask, sell at the bid); a negative cost "
                   "that survives the spread is money for nothing, usually a stale quote.")

    st.markdown("#### Risk-neutral density per expiry (Breeden-Litzenberger, from the fitted surface)")
    used = prep.quotes[prep.quotes["use"].astype(bool)]
    exp_str = used["expiry"].dt.strftime("%Y-%m-%d")
    Te = used.groupby(exp_str)["T"].first()
    K = np.linspace(*np.quantile(used["strike"], [0.0, 1.0]), 301)
    dens = data.density(fr.surface, prep.forwards, K, Te.to_numpy(float))
    controls.chart(figures.densities(K, list(Te.index), dens), key="arbitrage.density", name="densities")
    mass = np.trapezoid(np.nan_to_num(dens), K, axis=1)
    st.caption("Density p(K) = (d2C/dK2) / D from the fitted surface (closed form in total variance). "
               "Mass within the plotted strikes per expiry: "
               + ", ".join(f"{e} {m:.2f}" for e, m in zip(Te.index, mass, strict=True)) + ". Negative density would be "
               "butterfly arbitrage (drawn in red).")
