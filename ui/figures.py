"""Pure Plotly builders: arrays and frames in, ``go.Figure`` out (no Streamlit, no core calls).

Grids follow the project's ``(n_T, n_K)`` convention: one row per expiry. Vols are fractions
(0.20 = 20%); the figures show them in percent. Flags are boolean grids of the grid's shape; each
kind of flag has one colour and one marker symbol everywhere (``FLAG_STYLE``), so a trader learns
the legend once.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

#: flag -> (legend label, colour, 2D marker symbol, 3D marker symbol)
FLAG_STYLE: dict[str, tuple[str, str, str, str]] = {
    "clipped_high": ("clipped at the band's top", "#d62728", "triangle-up", "diamond"),
    "clipped_low": ("clipped at the band's floor", "#1f77b4", "triangle-down", "square"),
    "butterfly": ("butterfly arbitrage (g < 0)", "#e377c2", "x", "x"),
    "calendar": ("calendar arbitrage (dw/dT < 0)", "#ff7f0e", "cross", "cross"),
    "extrapolated": ("extrapolated (no quotes there)", "#7f7f7f", "circle-open", "circle-open"),
}
IMPLIED_SCALE = "Viridis"
LOCAL_SCALE = "Plasma"
DIVERGING_SCALE = "RdBu"
BID_ASK_COLOUR = "#1f77b4"
FIT_COLOUR = "#2ca02c"
LOCAL_COLOUR = "#d62728"
QUOTE_COLOUR = "#111111"
_LAYOUT = dict(template="plotly_white", margin=dict(l=10, r=10, t=50, b=10), hovermode="closest")


def _grid(x, T, Z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float)
    T = np.asarray(T, dtype=float).ravel()
    Z = np.asarray(Z, dtype=float)
    if Z.ndim != 2 or Z.shape[0] != T.size:
        raise ValueError(f"grid must be (n_T, n_K) = ({T.size}, n_K), got shape {Z.shape}")
    if x.ndim == 1 and x.size != Z.shape[1]:
        raise ValueError(f"x has {x.size} points but the grid has {Z.shape[1]} columns")
    if x.ndim == 2 and x.shape != Z.shape:
        raise ValueError(f"2D x must have the grid's shape {Z.shape}, got {x.shape}")
    return x, T, Z


def flag_text(flags: Mapping[str, np.ndarray] | None, shape: tuple[int, int]) -> np.ndarray:
    """Per cell, the comma-separated names of its flags ('' when none): hover text."""
    out = np.full(shape, "", dtype=object)
    if not flags:
        return out
    for name in FLAG_STYLE:
        m = flags.get(name)
        if m is None:
            continue
        m = np.broadcast_to(np.asarray(m, dtype=bool), shape)
        for i, j in zip(*np.nonzero(m), strict=True):
            out[i, j] = f"{out[i, j]}, {name}" if out[i, j] else name
    return out


def surface_3d(x, T, Z, *, title: str, zlabel: str, xlabel: str = "strike",
               flags: Mapping[str, np.ndarray] | None = None,
               other: tuple[str, np.ndarray] | None = None,
               points: Mapping[str, np.ndarray] | None = None,
               colorscale: str = IMPLIED_SCALE, zrange: tuple[float, float] | None = None) -> go.Figure:
    """A rotatable 3D surface of a vol grid over (x, T), flagged cells as markers on it.

    ``x``: (n_K,) or (n_T, n_K) strikes or moneyness; ``T``: (n_T,) years; ``Z``: (n_T, n_K) vols as
    fractions. ``flags``: name -> bool grid (names of ``FLAG_STYLE``). ``other``: (label, grid) shown
    in the hover too (e.g. implied vol on the local-vol surface). ``points``: market quotes
    ``{"x", "T", "iv"}`` drawn as dots. The hover names K (or moneyness), T, the vols and the flags.
    """
    x, T, Z = _grid(x, T, Z)
    X = np.broadcast_to(x, Z.shape) if x.ndim == 1 else x
    Tg = np.broadcast_to(T[:, None], Z.shape)
    text = flag_text(flags, Z.shape)
    hover = f"{xlabel} %{{x:.4g}}<br>T %{{y:.3f}} y<br>{zlabel} %{{z:.2f}}%"
    custom = None
    if other is not None:
        custom = np.asarray(other[1], dtype=float) * 100.0
        hover += f"<br>{other[0]} %{{customdata:.2f}}%"
    hover += "<br>%{text}<extra></extra>"
    fig = go.Figure()
    fig.add_trace(go.Surface(
        x=X, y=Tg, z=Z * 100.0, surfacecolor=Z * 100.0, colorscale=colorscale, text=text,
        customdata=custom, hovertemplate=hover, name=zlabel,
        cmin=None if zrange is None else zrange[0] * 100, cmax=None if zrange is None else zrange[1] * 100,
        colorbar=dict(title=dict(text=f"{zlabel} %"), len=0.75, thickness=14),
    ))
    if flags:
        for name, (label, colour, _sym2, sym3) in FLAG_STYLE.items():
            m = flags.get(name)
            if m is None:
                continue
            m = np.broadcast_to(np.asarray(m, dtype=bool), Z.shape) & np.isfinite(Z)
            if not m.any():
                continue
            fig.add_trace(go.Scatter3d(
                x=X[m], y=Tg[m], z=Z[m] * 100.0, mode="markers", name=f"{label} ({int(m.sum())})",
                marker=dict(size=2 if name == "extrapolated" else 3, color=colour, symbol=sym3, opacity=0.8),
                hovertemplate=f"{label}<br>{xlabel} %{{x:.4g}}<br>T %{{y:.3f}} y<br>{zlabel} %{{z:.2f}}%<extra></extra>",
            ))
    if points is not None and len(np.asarray(points["x"])):
        fig.add_trace(go.Scatter3d(
            x=np.asarray(points["x"], float), y=np.asarray(points["T"], float),
            z=np.asarray(points["iv"], float) * 100.0, mode="markers", name="market quotes (mid)",
            marker=dict(size=1.5, color=QUOTE_COLOUR, opacity=0.6),
            hovertemplate=f"quote<br>{xlabel} %{{x:.4g}}<br>T %{{y:.3f}} y<br>mid iv %{{z:.2f}}%<extra></extra>",
        ))
    fig.update_layout(
        title=title, height=500, **_LAYOUT,
        legend=dict(orientation="h", yanchor="bottom", y=-0.08, x=0),
        scene=dict(xaxis_title=xlabel, yaxis_title="T (years)", zaxis_title=f"{zlabel} (%)",
                   camera=dict(eye=dict(x=1.55, y=-1.65, z=0.75))),
    )
    return fig


def heatmap(x, T, Z, *, title: str, zlabel: str, xlabel: str = "strike",
            flags: Mapping[str, np.ndarray] | None = None,
            other: tuple[str, np.ndarray] | None = None,
            colorscale: str = LOCAL_SCALE, zrange: tuple[float, float] | None = None,
            zmid: float | None = None, percent: bool = True, fmt: str = ".2f") -> go.Figure:
    """A heatmap of a grid over (x, T) (x 1D), flagged cells marked with ``FLAG_STYLE`` symbols.

    ``percent``: multiply by 100 and label with '%' (vols); otherwise raw values (g, dw/dT).
    ``zmid``: centre of a diverging colour scale (0 for g and dw/dT, so negatives stand out).
    """
    x, T, Z = _grid(x, T, Z)
    if x.ndim != 1:
        raise ValueError("heatmap needs a 1D x (strikes or K/S); use surface_3d for a 2D x")
    scale = 100.0 if percent else 1.0
    unit = "%" if percent else ""
    text = flag_text(flags, Z.shape)
    hover = f"{xlabel} %{{x:.4g}}<br>T %{{y:.3f}} y<br>{zlabel} %{{z:{fmt}}}{unit}"
    custom = None
    if other is not None:
        custom = np.asarray(other[1], dtype=float) * 100.0
        hover += f"<br>{other[0]} %{{customdata:.2f}}%"
    hover += "<br>%{text}<extra></extra>"
    fig = go.Figure(go.Heatmap(
        x=x, y=T, z=Z * scale, colorscale=colorscale, text=text, customdata=custom, hovertemplate=hover,
        zmin=None if zrange is None else zrange[0] * scale, zmax=None if zrange is None else zrange[1] * scale,
        zmid=zmid, colorbar=dict(title=dict(text=f"{zlabel} {unit}".strip()), thickness=14), name=zlabel,
    ))
    if flags:
        X = np.broadcast_to(x, Z.shape)
        Tg = np.broadcast_to(T[:, None], Z.shape)
        for name, (label, colour, sym2, _sym3) in FLAG_STYLE.items():
            m = flags.get(name)
            if m is None:
                continue
            m = np.broadcast_to(np.asarray(m, dtype=bool), Z.shape)
            if not m.any():
                continue
            fig.add_trace(go.Scatter(
                x=X[m], y=Tg[m], mode="markers", name=f"{label} ({int(m.sum())})",
                marker=dict(size=4 if name == "extrapolated" else 5, color=colour, symbol=sym2, opacity=0.7,
                            line=dict(width=1, color=colour)),
                hovertemplate=f"{label}<br>{xlabel} %{{x:.4g}}<br>T %{{y:.3f}} y<extra></extra>",
            ))
    fig.update_layout(title=title, height=430, xaxis_title=xlabel, yaxis_title="T (years)", **_LAYOUT,
                      legend=dict(orientation="h", yanchor="top", y=-0.15, x=0))
    return fig


def smile(x_quotes, iv_bid, iv_ask, iv_mid, x_grid, iv_fit, local_vol=None, *, title: str,
          xlabel: str = "strike", used=None) -> go.Figure:
    """One expiry's smile: quotes as bid/ask bars (mid dot), the fitted implied vol, the local-vol slice.

    ``x_quotes``, ``iv_bid``, ``iv_ask``, ``iv_mid``: (n,) per quote (NaN bid iv: the bar starts at 0).
    ``x_grid``, ``iv_fit``, ``local_vol``: (m,) curves. ``used``: (n,) bool, quotes the fit used
    (others drawn grey).
    """
    xq = np.asarray(x_quotes, float)
    lo = np.asarray(iv_bid, float)
    hi = np.asarray(iv_ask, float)
    mid = np.asarray(iv_mid, float)
    used = np.ones(xq.shape, bool) if used is None else np.asarray(used, bool)
    lo_f = np.where(np.isfinite(lo), lo, 0.0)
    centre = np.where(np.isfinite(mid), mid, 0.5 * (lo_f + hi))
    fig = go.Figure()
    for mask, name, colour in ((used, "market bid/ask (used)", BID_ASK_COLOUR),
                               (~used, "market bid/ask (not used)", "#bbbbbb")):
        if not mask.any():
            continue
        fig.add_trace(go.Scatter(
            x=xq[mask], y=centre[mask] * 100, mode="markers", name=name,
            marker=dict(size=4, color=colour),
            error_y=dict(type="data", symmetric=False, array=(hi - centre)[mask] * 100,
                         arrayminus=(centre - lo_f)[mask] * 100, color=colour, thickness=1.5, width=0),
            customdata=np.c_[lo[mask] * 100, hi[mask] * 100],
            hovertemplate=f"{xlabel} %{{x:.4g}}<br>bid iv %{{customdata[0]:.2f}}%<br>ask iv %{{customdata[1]:.2f}}%<extra></extra>",
        ))
    fig.add_trace(go.Scatter(x=np.asarray(x_grid, float), y=np.asarray(iv_fit, float) * 100, mode="lines",
                             name="fitted implied vol", line=dict(color=FIT_COLOUR, width=2.5),
                             hovertemplate=f"{xlabel} %{{x:.4g}}<br>implied %{{y:.2f}}%<extra></extra>"))
    if local_vol is not None:
        fig.add_trace(go.Scatter(x=np.asarray(x_grid, float), y=np.asarray(local_vol, float) * 100,
                                 mode="lines", name="local vol", line=dict(color=LOCAL_COLOUR, width=2, dash="dash"),
                                 hovertemplate=f"{xlabel} %{{x:.4g}}<br>local %{{y:.2f}}%<extra></extra>"))
    # Range from what matters (used quotes, the fit): one-sided far-wing quotes would squash the smile.
    focus = np.r_[np.asarray(iv_fit, float), lo[used & np.isfinite(lo)], hi[used & np.isfinite(hi)]]
    focus = focus[np.isfinite(focus)]
    yrange = None
    if focus.size:
        a, b = float(focus.min()) * 100, float(focus.max()) * 100
        pad = 0.15 * max(b - a, 1.0)
        yrange = [max(0.0, a - pad), b + pad]
    fig.update_layout(title=title, height=420, xaxis_title=xlabel, yaxis_title="vol (%)", **_LAYOUT,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    if yrange is not None:
        fig.update_yaxes(range=yrange)
    return fig


def residuals(x, resid_bp, half_spread_bp=None, *, title: str, xlabel: str = "strike") -> go.Figure:
    """Fit minus market mid, in vol basis points (1 bp = 0.01 vol point), with the half bid/ask band."""
    x = np.asarray(x, float)
    r = np.asarray(resid_bp, float)
    order = np.argsort(x)
    fig = go.Figure()
    if half_spread_bp is not None:
        h = np.asarray(half_spread_bp, float)[order]
        fig.add_trace(go.Scatter(x=np.r_[x[order], x[order][::-1]], y=np.r_[h, -h[::-1]], fill="toself",
                                 fillcolor="rgba(31,119,180,0.15)", line=dict(width=0), name="half bid/ask",
                                 hoverinfo="skip"))
    inside = np.abs(r) <= (np.abs(np.asarray(half_spread_bp, float)) if half_spread_bp is not None else np.inf)
    fig.add_trace(go.Scatter(x=x, y=r, mode="markers", name="fit - mid",
                             marker=dict(size=6, color=np.where(inside, FIT_COLOUR, LOCAL_COLOUR)),
                             hovertemplate=f"{xlabel} %{{x:.4g}}<br>fit - mid %{{y:.1f}} bp<extra></extra>"))
    fig.add_hline(y=0, line=dict(color="#444", width=1))
    fig.update_layout(title=title, height=300, xaxis_title=xlabel, yaxis_title="vol bp", **_LAYOUT,
                      showlegend=True, legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    return fig


def term_structure(T, atm_iv, atm_lv, rule_lv=None, *, title: str = "ATM term structure") -> go.Figure:
    """ATM implied and local vol against T; ``rule_lv`` = sigma_imp + T dsigma_imp/dT (the rule of thumb)."""
    T = np.asarray(T, float)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=T, y=np.asarray(atm_iv, float) * 100, mode="lines+markers", name="ATM implied",
                             line=dict(color=FIT_COLOUR, width=2.5)))
    fig.add_trace(go.Scatter(x=T, y=np.asarray(atm_lv, float) * 100, mode="lines+markers", name="ATM local (Dupire)",
                             line=dict(color=LOCAL_COLOUR, width=2.5)))
    if rule_lv is not None:
        fig.add_trace(go.Scatter(x=T, y=np.asarray(rule_lv, float) * 100, mode="lines",
                                 name="rule of thumb: σ_imp + T dσ_imp/dT",
                                 line=dict(color="#444", width=1.5, dash="dot")))
    fig.update_layout(title=title, height=360, xaxis_title="T (years)", yaxis_title="vol (%)", **_LAYOUT,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    return fig


def skew_ratio(T, implied_skew, local_skew, *, title: str = "ATM skew: local vs implied") -> go.Figure:
    """ATM skews d sigma/dy of implied and local vol, and their ratio against the rule of thumb 2."""
    T = np.asarray(T, float)
    imp = np.asarray(implied_skew, float)
    loc = np.asarray(local_skew, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = loc / imp
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=T, y=ratio, mode="lines+markers", name="local skew / implied skew",
                             line=dict(color=LOCAL_COLOUR, width=2.5),
                             customdata=np.c_[imp * 100, loc * 100],
                             hovertemplate="T %{x:.3f} y<br>ratio %{y:.2f}<br>implied skew %{customdata[0]:.2f} vol pts per unit y"
                                           "<br>local skew %{customdata[1]:.2f}<extra></extra>"))
    fig.add_hline(y=2.0, line=dict(color="#444", dash="dot"), annotation_text="rule of thumb: 2",
                  annotation_position="top left")
    fig.update_layout(title=title, height=360, xaxis_title="T (years)", yaxis_title="ratio", **_LAYOUT,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    return fig


def densities(K, labels: Sequence[str], dens, *, title: str = "Risk-neutral density (Breeden-Litzenberger)",
              xlabel: str = "strike") -> go.Figure:
    """One density curve per expiry: ``dens`` (n_T, n_K) over ``K`` (n_K,); negative parts shaded red."""
    K = np.asarray(K, float)
    dens = np.atleast_2d(np.asarray(dens, float))
    fig = go.Figure()
    for lab, d in zip(labels, dens, strict=False):
        fig.add_trace(go.Scatter(x=K, y=d, mode="lines", name=str(lab),
                                 hovertemplate=f"{lab}<br>{xlabel} %{{x:.4g}}<br>density %{{y:.3g}}<extra></extra>"))
        neg = np.where(d < 0, d, np.nan)
        if np.isfinite(neg).any():
            fig.add_trace(go.Scatter(x=K, y=neg, mode="lines", line=dict(color=LOCAL_COLOUR, width=4),
                                     name=f"{lab}: negative density", showlegend=True))
    fig.add_hline(y=0, line=dict(color="#444", width=1))
    fig.update_layout(title=title, height=400, xaxis_title=xlabel, yaxis_title="density per unit strike", **_LAYOUT)
    return fig


def roundtrip(x, rows, error_bp, half_band_bp, *, title: str, xlabel: str = "strike",
              ylabel: str = "expiry") -> go.Figure:
    """Repriced minus market implied vol per quote (vol bp) as a map over (x, expiry row), coloured on a
    diverging scale centred at 0; quotes outside their half bid/ask band get a black ring.
    ``rows``: (n,) expiry labels (one row per expiry) or numbers."""
    x = np.asarray(x, float)
    rows = np.asarray(rows)
    e = np.asarray(error_bp, float)
    h = np.asarray(half_band_bp, float)
    inside = np.abs(e) <= h
    lim = float(np.nanmax(np.abs(e))) if np.isfinite(e).any() else 1.0
    fig = go.Figure(go.Scatter(
        x=x, y=rows, mode="markers", name="repriced - market",
        marker=dict(size=8, color=e, colorscale=DIVERGING_SCALE, cmin=-lim, cmax=lim, reversescale=True,
                    colorbar=dict(title=dict(text="bp"), thickness=14),
                    line=dict(width=np.where(inside, 0, 2), color="#000")),
        customdata=np.c_[h, inside.astype(int)],
        hovertemplate=f"{xlabel} %{{x:.4g}}<br>{ylabel} %{{y}}<br>repriced - market %{{marker.color:.1f}} bp"
                      "<br>half bid/ask %{customdata[0]:.1f} bp<br>inside band (1 = yes) %{customdata[1]}<extra></extra>",
    ))
    fig.update_layout(title=title, height=470, xaxis_title=xlabel, yaxis_title=ylabel, **_LAYOUT)
    if rows.dtype.kind in "OUS":
        fig.update_yaxes(type="category", categoryorder="category ascending")
    return fig


def compare_bars(labels: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str,
                 yaxis: str, errors: Mapping[str, Sequence[float]] | None = None) -> go.Figure:
    """Grouped bars: one group per label, one bar per series (e.g. local vol vs Black-Scholes,
    before vs after a shock); ``errors`` adds 2-standard-error bars (Monte Carlo)."""
    colours = [LOCAL_COLOUR, FIT_COLOUR, BID_ASK_COLOUR, "#9467bd"]
    fig = go.Figure()
    for i, (name, vals) in enumerate(series.items()):
        err = None
        if errors and name in errors and errors[name] is not None:
            err = dict(type="data", array=2.0 * np.asarray(errors[name], float), visible=True)
        fig.add_trace(go.Bar(x=list(labels), y=np.asarray(vals, float), name=name, error_y=err,
                             marker_color=colours[i % len(colours)]))
    fig.update_layout(title=title, barmode="group", height=380, yaxis_title=yaxis, **_LAYOUT)
    return fig


def before_after(x, before, after, *, title: str, xlabel: str, yaxis: str, percent: bool = True) -> go.Figure:
    """Two curves over ``x``: a quantity before and after a scenario shock (vols in percent by default)."""
    k = 100.0 if percent else 1.0
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=np.asarray(x, float), y=np.asarray(before, float) * k, mode="lines+markers",
                             name="before", line=dict(color=BID_ASK_COLOUR, width=2.5)))
    fig.add_trace(go.Scatter(x=np.asarray(x, float), y=np.asarray(after, float) * k, mode="lines+markers",
                             name="after", line=dict(color=LOCAL_COLOUR, width=2.5, dash="dash")))
    fig.update_layout(title=title, height=360, xaxis_title=xlabel, yaxis_title=yaxis, **_LAYOUT,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    return fig


def figure_html(fig: go.Figure) -> bytes:
    """A standalone HTML file of the figure (plotly.js embedded: opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True).encode("utf-8")
