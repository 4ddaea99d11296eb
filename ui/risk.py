"""The Risk page's cached stages and pure helpers: Greeks, vegas and the PDE's convergence of one product.

Stages follow ``ui.data``: keyed on the source's identity (``source_key``), the ``Settings`` and the product's frozen
terms (``make_product``); the chain passes unhashed (``_chain``). The fit and forwards come from
``ui.data``'s own cached stages, so the Risk page never refits what another page already fitted. Figure and table
builders are pure functions (data in, ``go.Figure`` / DataFrame out), testable without a browser.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import pipeline
from core.errors import InputError
from core.localvol import local_vol_from_surface
from core.pricing import backward, risk
from core.pricing.products import Asian, Barrier, Vanilla
from ui import data

_TTL = 3600
_ENTRIES = 32
PRODUCTS = ("Vanilla", "American vanilla", "Barrier", "Asian")
#: Monte Carlo settings of an Asian on the page (fewer paths than the CLI: the page must answer in seconds)
PAGE_MC = {"n_paths": 16_000, "n_steps": 60, "seed": 1, "batches": 8}


def make_product(kind: str, cp: int, strike: float, T: float, *, barrier: float | None = None,
                 barrier_kind: str = "up-and-out", rebate: float = 0.0, n_fixings: int = 12):
    """The page's choice as ``core.pricing.products`` terms (frozen and hashable: they key the stages' caches);
    ``kind`` one of ``PRODUCTS``. ``InputError`` on bad terms."""
    if kind in ("Vanilla", "American vanilla"):
        return Vanilla(strike=float(strike), T=float(T), cp=int(cp), american=kind == "American vanilla")
    if kind == "Barrier":
        if barrier is None:
            raise InputError("a barrier option needs a barrier level")
        return Barrier(strike=float(strike), T=float(T), barrier=float(barrier), kind=barrier_kind, cp=int(cp),
                       rebate=float(rebate))
    if kind == "Asian":
        return Asian(strike=float(strike), T=float(T), n_fixings=int(n_fixings), cp=int(cp))
    raise InputError(f"product must be one of {PRODUCTS}, got {kind!r}")


def _calibration(source_key, _chain, settings):
    prep = data.prepared(source_key, _chain, settings)
    fr = data.fitted(source_key, _chain, settings)
    return prep, fr


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner="Spot Greeks under local vol and Black-Scholes...")
def greeks(source_key: str, _chain, settings: pipeline.Settings, product) -> risk.SpotGreeks:
    """``core.pricing.risk.spot_greeks`` of the product."""
    prep, fr = _calibration(source_key, _chain, settings)
    return risk.spot_greeks(fr.surface, prep.forwards, product, clip=settings.clip, mc=PAGE_MC)


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner="Bucketed vega: bump, refit, local vol, reprice...")
def vega(source_key: str, _chain, settings: pipeline.Settings, product, n_expiry: int = risk.N_EXPIRY,
         full_check: bool = False) -> risk.VegaResult:
    """``core.pricing.risk.vega_buckets`` of the product (Asians: parallel vega only)."""
    prep, fr = _calibration(source_key, _chain, settings)
    return risk.vega_buckets(fr, prep.forwards, product, clip=settings.clip, mc=PAGE_MC,
                             n_expiry=n_expiry, full_check=full_check)


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner="Skew and term sensitivities...")
def shape(source_key: str, _chain, settings: pipeline.Settings, product) -> dict:
    """``core.pricing.risk.skew_term`` of the product."""
    prep, fr = _calibration(source_key, _chain, settings)
    return risk.skew_term(fr.surface, prep.forwards, product, clip=settings.clip, mc=PAGE_MC)


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner="The PDE at two grid sizes...")
def convergence(source_key: str, _chain, settings: pipeline.Settings, product) -> pd.DataFrame | None:
    """``core.pricing.backward.pde_convergence`` under the exact local vol (None for an Asian)."""
    if isinstance(product, Asian):
        return None
    prep, fr = _calibration(source_key, _chain, settings)
    lv = local_vol_from_surface(fr.surface, prep.forwards, settings.clip)
    return backward.pde_convergence(lv, prep.forwards, product)


# ------------------------------------------------------------------------------------------- pure helpers
def greeks_frame(g: risk.SpotGreeks) -> pd.DataFrame:
    """The Greeks table for display and CSV: one row per dynamics, the Monte Carlo standard errors kept."""
    t = g.table.copy()
    cols = ["dynamics", "price", "delta", "gamma", "theta", "vega"]
    cols += [c for c in t.columns if c.endswith("_se")]
    return t[[c for c in cols if c in t.columns]]


def vega_heatmap(v: risk.VegaResult) -> go.Figure:
    """Bucketed vega (price per vol point) over expiry bucket x standardised moneyness, diverging at 0."""
    b = v.buckets
    n_T = int(b["i_T"].max()) + 1
    zc = b.loc[b["i_T"] == 0, "z"].to_numpy(float)
    T_lab = [f"{lo:.3f}" if abs(hi - lo) < 1e-9 else f"{lo:.3f}-{hi:.3f}"
             for lo, hi in b.groupby("i_T")[["T_lo", "T_hi"]].first().to_numpy()]
    Z = np.asarray(v.grid, float).reshape(n_T, len(zc))
    K = b["strike"].to_numpy(float).reshape(n_T, len(zc))
    lim = float(np.nanmax(np.abs(Z))) if np.isfinite(Z).any() else 1.0
    fig = go.Figure(go.Heatmap(
        x=[f"{z:+.2g}" for z in zc], y=T_lab, z=Z, customdata=K, colorscale="RdBu", zmid=0.0,
        zmin=-lim, zmax=lim, colorbar=dict(title=dict(text="vega / vol pt")),
        texttemplate="%{z:.2f}",
        hovertemplate="z %{x} (strike ~%{customdata:.0f})<br>T %{y} y<br>vega %{z:.4g}<extra></extra>"))
    fig.update_layout(title=dict(text=f"Bucketed vega per vol point (sum {v.bucket_sum:.3g}, parallel "
                                      f"{v.parallel:.3g}, residual {v.residual:.2g})", x=0.01),
                      height=460, xaxis_title="standardised moneyness z = ln(K/F) / (ATM vol sqrt T)",
                      yaxis_title="expiry bucket (years)", margin=dict(l=60, r=20, t=50, b=50),
                      xaxis=dict(type="category"), yaxis=dict(type="category"))
    return fig


def vega_table(v: risk.VegaResult) -> pd.DataFrame:
    """The summary rows of a vega result: parallel (fast refit), full refit check, bucket sum and residual."""
    rows = [("parallel vega (linear refit)" if "linear" in v.refit else "parallel vega", v.parallel)]
    if v.parallel_se is not None:
        rows.append(("standard error", v.parallel_se))
    if v.parallel_full is not None:
        rows.append(("parallel vega (full refit, 1 pt central)", v.parallel_full))
    if np.isfinite(v.bucket_sum):
        rows += [("sum of buckets", v.bucket_sum), ("residual (parallel - sum)", v.residual)]
    return pd.DataFrame(rows, columns=["quantity", "value"])


def shape_frame(sh: dict) -> pd.DataFrame:
    """Skew, term and surface-parallel sensitivities (``core.pricing.risk.skew_term``) as rows."""
    names = {"skew": "skew tilt (vol pt per unit y)", "term": "term (vol pt at 1y, sqrt(1/T))",
             "parallel_surface": "parallel on the surface (no refit)"}
    rows = [(names.get(k, k), val) for k, val in sh.items() if not k.endswith("_se")]
    return pd.DataFrame(rows, columns=["quantity", "value"])
