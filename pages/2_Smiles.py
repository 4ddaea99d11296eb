"""Smiles: per expiry the quotes' bid/ask vols, the fit, the local-vol slice and the residuals; ATM term
structure and the seed document's rules of thumb checked against the data."""
import numpy as np
import pandas as pd
import streamlit as st

from ui import controls, data, figures, messages

controls.page_header("Smiles", "One expiry at a time: market bid/ask implied vols, the fitted smile, the local-vol "
                     "slice and the fit residuals; then the ATM term structure and the rules of thumb.")

with messages.page_guard():
    sel = controls.sidebar()
    prep = sel.run(data.prepared)
    fr = sel.run(data.fitted)
    lvs = sel.run(data.smile_local_vol)

    q = prep.quotes
    exp_str = q["expiry"].dt.strftime("%Y-%m-%d")
    fitted = [e for e in (sel.settings.expiries or prep.expiries)]
    if st.session_state.get("smiles.expiry") not in fitted:
        st.session_state["smiles.expiry"] = fitted[0]
    e = st.selectbox("Expiry", fitted, key="smiles.expiry",
                     format_func=lambda s: f"{s} ({q.loc[exp_str == s, 'T'].iloc[0]:.3f} y)")
    qe = q[(exp_str == e) & (np.isfinite(q["iv_mid"]) | np.isfinite(q["iv_ask"]))]
    T = float(q.loc[exp_str == e, "T"].iloc[0])
    F = float(np.asarray(prep.forwards.F(T)))
    Kq = qe["strike"].to_numpy(float)
    lo, hi = (Kq.min(), Kq.max()) if Kq.size else (0.8 * F, 1.2 * F)
    Kg = np.linspace(lo, hi, 161)
    iv_fit = np.asarray(fr.surface.implied_vol(np.log(Kg / F), np.full_like(Kg, T)), float)
    i = int(np.argmin(np.abs(lvs.T - T)))
    inr = (lvs.K >= lo) & (lvs.K <= hi)
    lv_slice = np.interp(Kg, lvs.K[inr], lvs.local_vol[i][inr]) if inr.sum() > 1 else None

    rm, ins = fr.rmse_bp.get(e), fr.inside_share.get(e)
    c = st.columns(4)
    c[0].metric("Forward", f"{F:,.2f}")
    c[1].metric("Quotes used", f"{int(qe['use'].astype(bool).sum())} of {len(qe)}")
    c[2].metric("Fit RMSE", f"{rm:.1f} bp" if rm is not None and np.isfinite(rm) else "n/a")
    c[3].metric("Fit inside bid/ask", f"{100 * ins:.0f}%" if ins is not None and np.isfinite(ins) else "n/a")

    left, right = st.columns([3, 2])
    with left:
        controls.chart(figures.smile(Kq, qe["iv_bid"], qe["iv_ask"], qe["iv_mid"], Kg, iv_fit, lv_slice,
                                     title=f"Smile {e}: bid/ask vols, fit, local vol", used=qe["use"].astype(bool)),
                       key="smiles.smile", name=f"smile_{e}")
    with right:
        res = fr.residuals
        re_ = res[pd.to_datetime(res["expiry"]).dt.strftime("%Y-%m-%d") == e]
        half = (re_["iv_ask"] - re_["iv_bid"]).to_numpy(float) * 1e4 / 2 if "iv_ask" in re_ else None
        controls.chart(figures.residuals(re_["strike"], re_["resid_bp"], half,
                                         title="Fit minus mid (vol bp) against half the bid/ask"),
                       key="smiles.residuals", name=f"residuals_{e}")

    st.markdown("#### ATM term structure and the rules of thumb")
    Tq = np.array(sorted(q.loc[exp_str.isin(fitted), "T"].unique()), float)
    Tg = np.linspace(Tq.min(), Tq.max(), 60)
    rules = data.rules_of_thumb(fr.surface, Tg)
    at_q = data.rules_of_thumb(fr.surface, Tq)
    left, right = st.columns(2)
    with left:
        controls.chart(figures.term_structure(rules["T"], rules["atm_iv"], rules["atm_lv"], rules["rule_lv"]),
                       key="smiles.term", name="atm_term_structure")
    with right:
        controls.chart(figures.skew_ratio(rules["T"], rules["iv_skew"], rules["lv_skew"]),
                       key="smiles.skew", name="skew_ratio")
    gap = (at_q["atm_lv"] - at_q["rule_lv"]).abs() * 1e4
    short = at_q[at_q["T"] <= 0.25]["skew_ratio"]
    st.markdown(
        f"- **ATM local vs implied:** local vol at the money is within **{np.nanmax(gap):.0f} bp** of "
        f"sigma_imp + T dsigma_imp/dT at every fitted expiry (median {np.nanmedian(gap):.0f} bp).\n"
        f"- **Local skew about twice implied:** the ratio of ATM skews is "
        f"{(f'**{np.nanmedian(short):.2f}** (median over expiries up to 3 months)' if len(short) else 'n/a under 3 months')}"
        f"; over all fitted expiries it ranges {np.nanmin(at_q['skew_ratio']):.2f} to {np.nanmax(at_q['skew_ratio']):.2f}.")
    show = at_q.assign(expiry=[exp_str[q["T"] == t].iloc[0] for t in Tq])
    show = show[["expiry", "T", "atm_iv", "atm_lv", "rule_lv", "iv_skew", "lv_skew", "skew_ratio"]]
    pct = st.column_config.NumberColumn
    st.dataframe(show, hide_index=True, width="stretch", column_config={
        "T": pct("T (years)", format="%.3f"),
        "atm_iv": pct("ATM implied", format="percent"),
        "atm_lv": pct("ATM local", format="percent"),
        "rule_lv": pct("implied + T dσ/dT", format="percent", help="the rule of thumb for the ATM local vol"),
        "iv_skew": pct("implied skew dσ/dy", format="%.3f"),
        "lv_skew": pct("local skew dσ/dy", format="%.3f"),
        "skew_ratio": pct("local / implied skew", format="%.2f", help="rule of thumb: about 2"),
    })
