"""Data & export: every quote with its reason code and the counts per reason; the downloads."""
import pandas as pd
import streamlit as st

from core import pipeline
from core.cleaning import REASONS, use_mask
from ui import controls, data, messages, series

controls.page_header("Data & export", "Every quote loaded, with the reason it is used or not; forwards per expiry; "
                     "downloads of the quotes, the local-vol grid, the fit parameters and QuantLib's layout.")

with messages.page_guard():
    sel = controls.sidebar()
    prep = sel.run(data.prepared)
    fr = sel.run(data.fitted)
    lv = sel.run(data.local_vol)

    quotes = pipeline.quotes_frame(prep, fr)
    # the expiry series of every row (SPX AM and SPXW PM of one date apart), in the table and the export
    quotes.insert(int(list(quotes.columns).index("expiry")) + 1, "expiry_key", series.quote_keys(quotes).to_numpy())
    labels = series.expiry_labels(k for k in quotes["expiry_key"].unique() if k)
    fwd = pipeline.forwards_frame(prep)
    if "T" in fwd:
        fwd.insert(1, "expiry_key", [labels.get(k, k) for k in series.keys_for_T(prep.quotes, fwd["T"].to_numpy(float))])
    carry_cols = [c for c in ("q", "carry_flag", "carry_residual_bp", "r") if c in fwd]
    if carry_cols:   # an American chain: the implied carry and its diagnostic first
        fwd = fwd[[c for c in ("expiry", "expiry_key", "T") if c in fwd] + carry_cols
                  + [c for c in fwd.columns if c not in carry_cols and c not in ("expiry", "expiry_key", "T")]]
    date_col = st.column_config.DateColumn("expiry date", format="YYYY-MM-DD")
    key_col = st.column_config.TextColumn("expiry series", help="date, with AM for an AM-settled series (SPX monthly)")
    counts = pd.Series(prep.counts, name="quotes").rename_axis("reason").reset_index()
    counts["meaning"] = counts["reason"].map(REASONS).fillna("")
    counts = counts.sort_values("quotes", ascending=False)
    in_use = use_mask(quotes)
    c = st.columns(4)
    c[0].metric("Quotes loaded", f"{len(quotes):,}")
    c[1].metric("Used in the fit", f"{int(in_use.sum()):,}")
    c[2].metric("Expiry series fitted", f"{quotes.loc[in_use, 'expiry_key'].nunique()} of {quotes['expiry_key'].nunique()}")
    c[3].metric("Excluded with a reason", f"{int((quotes['reason'] != 'ok').sum()):,}")
    left, right = st.columns([2, 3])
    with left:
        st.markdown("#### Quotes per reason code")
        st.dataframe(counts, hide_index=True, width="stretch")
    with right:
        st.markdown("#### Forwards per expiry (put-call parity)" if prep.american is None
                    else "#### Forwards and implied carry per expiry (American model)")
        st.dataframe(fwd, hide_index=True, width="stretch",
                     column_config={"expiry": date_col, "expiry_key": key_col,
                                    "T": st.column_config.NumberColumn(format="%.4f"),
                                    "q": st.column_config.NumberColumn("q (carry)", format="percent",
                                                                       help="implied dividend yield or borrow"),
                                    "r": st.column_config.NumberColumn(format="percent"),
                                    "carry_residual_bp": st.column_config.NumberColumn(
                                        "call-put vol gap (bp)", format="%.1f",
                                        help="median |American vol of the call - of the put| at this q")})

    if prep.american is not None:  # an American chain: what the de-Americanisation did
        am = prep.american.summary()
        sm = am["carry_smoothness"]
        st.markdown("#### American exercise: European-equivalent quotes")
        c = st.columns(4)
        c[0].metric("Exercise style", "American")
        c[1].metric("Rate r", f"{am['r']:.2%}", help=f"source: {am['rate_source']} (core.american.implied_rate)")
        c[2].metric("Quotes converted", f"{am['share_converted']:.0%}",
                    help="usable quotes given a European equivalent (American vol, then the European price at it)")
        ty = am["trailing_dividend_yield"]
        c[3].metric("Carry level (T >= 3 months)", "n/a" if sm["level"] is None else f"{sm['level']:.2%}",
                    help="median implied q; max jump between adjacent expiries: "
                         + ("n/a" if sm["max_jump"] is None else f"{sm['max_jump']:.2%}")
                         + ("" if ty is None else f"; trailing 12-month dividend yield of the source: {ty:.2%}"))
        st.caption(f"Dividend model: {am['dividend_model']}. Conversions flagged (not used): "
                   + ", ".join(f"{k} {v}" for k, v in am["counts"].items() if k.startswith("american_"))
                   + ". Expiries whose carry is flagged: "
                   + (", ".join(f"{k} {v}" for k, v in am["carry_flags"].items()) if am["carry_flags"] else "none")
                   + " (noisy: an ex-dividend date inside a short expiry's life, which one continuous yield averages).")

    st.markdown("#### Quotes")
    reasons = sorted(quotes["reason"].unique())
    pick = st.multiselect("Show reasons", reasons, default=reasons, key="data.reasons")
    cols = [c for c in ("expiry_key", "expiry", "T", "strike", "cp", "bid", "ask", "mid", "bid_american", "ask_american",
                        "eep", "deam_reason", "volume", "open_interest", "reason",
                        "use", "use_rule", "F", "y", "iv_bid", "iv_mid", "iv_ask", "iv_fit", "resid_bp")
            if c in quotes.columns]
    table = quotes.loc[quotes["reason"].isin(pick), cols].copy()
    table["expiry_key"] = table["expiry_key"].map(lambda k: labels.get(k, k))   # '2024-01-19 PM' where an AM exists
    st.dataframe(table, hide_index=True, width="stretch", height=360,
                 column_config={"expiry": date_col, "expiry_key": key_col,
                                "T": st.column_config.NumberColumn(format="%.4f")})

    st.markdown("#### Downloads")
    stem = f"{sel.chain.underlying}_{pd.Timestamp(sel.chain.asof):%Y%m%d_%H%M}"
    layout_frame, layout = data.ql_layout(lv)
    params = {"method": fr.method, "settings": sel.settings, "params": fr.params, "rmse_bp": fr.rmse_bp,
              "inside_bid_ask": fr.inside_share, "warnings": [str(w) for w in fr.warnings],
              "source": sel.label, "underlying": sel.chain.underlying, "asof": pd.Timestamp(sel.chain.asof),
              "market_time": pd.Timestamp(sel.chain.market_time) if sel.chain.market_time is not None else None}
    c = st.columns(5)
    c[0].download_button("Quotes (CSV)", data=lambda: data.safe_csv(quotes), mime="text/csv", on_click="ignore",
                         file_name=data.download_name(stem, "quotes", ext="csv"), key="data.dl_quotes")
    c[1].download_button("Local-vol grid (CSV)", data=lambda: data.safe_csv(data.lv_grid_frame(lv)), mime="text/csv",
                         on_click="ignore", file_name=data.download_name(stem, "local_vol", ext="csv"),
                         key="data.dl_lv", help="T, strike, iv_imp, call_price, dC_dT, d2C_dK2, sigma_loc and the flags")
    c[2].download_button("Fit parameters (JSON)", data=lambda: data.to_json_bytes(params), mime="application/json",
                         on_click="ignore", file_name=data.download_name(stem, "fit", ext="json"), key="data.dl_params")
    c[3].download_button("QuantLib layout (CSV)", data=lambda: data.safe_csv(layout_frame), mime="text/csv",
                         on_click="ignore", file_name=data.download_name(stem, "fixed_local_vol", ext="csv"),
                         key="data.dl_ql_csv", help="FixedLocalVolSurface: one row per strike, one column per time")
    c[4].download_button("QuantLib layout (JSON)", data=lambda: data.to_json_bytes(layout), mime="application/json",
                         on_click="ignore", file_name=data.download_name(stem, "fixed_local_vol", ext="json"),
                         key="data.dl_ql_json", help="{times, strikes, matrix (strikes x times)}")
    st.caption("CSV cells that a spreadsheet would run as a formula (starting with = + - @) are written with a "
               "leading apostrophe. Each chart on the other pages has its own HTML download.")
