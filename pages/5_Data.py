"""Data & export: every quote with its reason code and the counts per reason; the downloads."""
import pandas as pd
import streamlit as st

from core import pipeline
from ui import controls, data, messages

controls.page_header("Data & export", "Every quote loaded, with the reason it is used or not; forwards per expiry; "
                     "downloads of the quotes, the local-vol grid, the fit parameters and QuantLib's layout.")

with messages.page_guard():
    sel = controls.sidebar()
    prep = sel.run(data.prepared)
    fr = sel.run(data.fitted)
    lv = sel.run(data.local_vol)
    from core.cleaning import REASONS

    quotes = pipeline.quotes_frame(prep, fr)
    date_col = st.column_config.DateColumn("expiry", format="YYYY-MM-DD")
    counts = pd.Series(prep.counts, name="quotes").rename_axis("reason").reset_index()
    counts["meaning"] = counts["reason"].map(REASONS).fillna("")
    counts = counts.sort_values("quotes", ascending=False)
    left, right = st.columns([2, 3])
    with left:
        st.markdown("#### Quotes per reason code")
        st.dataframe(counts, hide_index=True, width="stretch")
    with right:
        st.markdown("#### Forwards per expiry (put-call parity)")
        st.dataframe(pipeline.forwards_frame(prep), hide_index=True, width="stretch",
                     column_config={"expiry": date_col, "T": st.column_config.NumberColumn(format="%.4f")})

    st.markdown("#### Quotes")
    reasons = sorted(quotes["reason"].unique())
    pick = st.multiselect("Show reasons", reasons, default=reasons, key="data.reasons")
    cols = [c for c in ("expiry", "T", "strike", "cp", "bid", "ask", "mid", "volume", "open_interest", "reason",
                        "use", "use_rule", "F", "y", "iv_bid", "iv_mid", "iv_ask", "iv_fit", "resid_bp")
            if c in quotes.columns]
    st.dataframe(quotes.loc[quotes["reason"].isin(pick), cols], hide_index=True, width="stretch", height=360,
                 column_config={"expiry": date_col, "T": st.column_config.NumberColumn(format="%.4f")})

    st.markdown("#### Downloads")
    stem = f"{sel.chain.underlying}_{pd.Timestamp(sel.chain.asof):%Y%m%d_%H%M}"
    layout_frame, layout = data.ql_layout(lv)
    params = {"method": fr.method, "settings": sel.settings, "params": fr.params, "rmse_bp": fr.rmse_bp,
              "inside_bid_ask": fr.inside_share, "warnings": [str(w) for w in fr.warnings],
              "source": sel.label, "underlying": sel.chain.underlying, "asof": pd.Timestamp(sel.chain.asof)}
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
