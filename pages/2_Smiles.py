"""Smiles: per expiry the quotes' bid/ask vols, the fit, the local-vol slice and the residuals; ATM term
structure and the seed document's rules of thumb checked against the data."""
import numpy as np
import pandas as pd
import streamlit as st

from core.cleaning import use_mask
from ui import controls, data, figures, messages, series, state

controls.page_header("Smiles", "One expiry at a time: market bid/ask implied vols, the fitted smile, the local-vol "
                     "slice and the fit residuals; then the ATM term structure and the rules of thumb.")

with messages.page_guard():
    sel = controls.sidebar()
    prep = sel.run(data.prepared)
    fr = sel.run(data.fitted)
    lvs = sel.run(data.smile_local_vol)

    q = prep.quotes
    keys = series.quote_keys(q)
    fitted = series.sort_keys(k for k in pd.unique(keys[use_mask(q)]) if k)   # the series the fit used
    labels = series.expiry_labels(series.sort_keys(k for k in pd.unique(keys) if k))
    kt = series.key_times(q)
    if state.get("smiles.expiry") not in fitted:
        # the first expiry shown: the one nearest a month out (the shortest ones are mostly noise)
        state.put("smiles.expiry", min(fitted, key=lambda k: abs(float(kt.get(k, 0.0)) - 1.0 / 12.0)))
    c1, c2 = st.columns([2, 3])
    e = state.remember("smiles.expiry", c1.selectbox(
        "Expiry", fitted, **state.keep("smiles.expiry", tuple(fitted)),
        format_func=lambda k: f"{labels.get(k, k)} ({kt.get(k, float('nan')):.3f} y)"))
    show_all = state.remember("smiles.show_all", c2.checkbox(
        "Show every quote of this expiry (axes include the far wings not used)", **state.keep("smiles.show_all")))
    in_e = keys.eq(e).to_numpy()
    qe = q[in_e & (np.isfinite(q["iv_mid"]) | np.isfinite(q["iv_ask"])).to_numpy()]
    T = float(kt[e])
    F = float(np.asarray(prep.forwards.F(T)))
    used_e = use_mask(qe)
    Kq = qe["strike"].to_numpy(float)
    Kspan = Kq if (show_all or not used_e.any()) else Kq[used_e]
    lo, hi = (Kspan.min(), Kspan.max()) if Kspan.size else (0.8 * F, 1.2 * F)
    Kg = np.linspace(lo, hi, 161)
    iv_fit = np.asarray(fr.surface.implied_vol(np.log(Kg / F), np.full_like(Kg, T)), float)
    i = int(np.argmin(np.abs(lvs.T - T)))
    lv_slice = np.interp(Kg, lvs.K, lvs.local_vol[i]) if lvs.K.size > 1 else None
    if lv_slice is not None:
        lv_slice = np.where((Kg >= lvs.K.min()) & (Kg <= lvs.K.max()), lv_slice, np.nan)

    rm = fr.rmse_bp.get(e, fr.rmse_bp.get(series.key_date(e)))
    ins = fr.inside_share.get(e, fr.inside_share.get(series.key_date(e)))
    c = st.columns(4)
    c[0].metric("Forward", f"{F:,.2f}")
    c[1].metric("Quotes used", f"{int(used_e.sum())} of {len(qe)}")
    c[2].metric("Fit RMSE", f"{rm:.1f} bp" if rm is not None and np.isfinite(rm) else "n/a")
    c[3].metric("Fit inside bid/ask", f"{100 * ins:.0f}%" if ins is not None and np.isfinite(ins) else "n/a")

    left, right = st.columns([3, 2])
    with left:
        controls.chart(figures.smile(Kq, qe["iv_bid"], qe["iv_ask"], qe["iv_mid"], Kg, iv_fit, lv_slice,
                                     title=f"Smile {labels.get(e, e)}: bid/ask vols, fit, local vol", used=used_e,
                                     show_all=show_all),
                       key="smiles.smile", name=f"smile_{e}")
    with right:
        res = fr.residuals
        re_ = res[series.keys_for_T(q, res["T"]) == e] if len(res) else res
        half = (re_["iv_ask"] - re_["iv_bid"]).to_numpy(float) * 1e4 / 2 if "iv_ask" in re_ else None
        controls.chart(figures.residuals(re_["strike"], re_["resid_bp"], half,
                                         title="Fit minus mid (vol bp) against half the bid/ask"),
                       key="smiles.residuals", name=f"residuals_{e}")

    st.markdown("#### ATM term structure and the rules of thumb")
    Tq = np.array(sorted(kt[fitted].to_numpy(float)), float)
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
    show = at_q.assign(expiry=[labels.get(k, k) for k in series.keys_for_T(q, Tq)])
    show = show[["expiry", "T", "atm_iv", "atm_lv", "rule_lv", "iv_skew", "lv_skew", "skew_ratio"]].copy()
    for col in ("atm_iv", "atm_lv", "rule_lv"):
        show[col] = 100.0 * show[col]                     # vol points, printed with two decimals
    pct = st.column_config.NumberColumn
    st.dataframe(show, hide_index=True, width="stretch", column_config={
        "T": pct("T (years)", format="%.3f"),
        "atm_iv": pct("ATM implied %", format="%.2f"),
        "atm_lv": pct("ATM local %", format="%.2f"),
        "rule_lv": pct("implied + T dσ/dT %", format="%.2f", help="the rule of thumb for the ATM local vol"),
        "iv_skew": pct("implied skew dσ/dy", format="%.3f"),
        "lv_skew": pct("local skew dσ/dy", format="%.3f"),
        "skew_ratio": pct("local / implied skew", format="%.2f", help="rule of thumb: about 2"),
    })
