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


def robust_range(values, q: tuple[float, float] = (2.0, 98.0), *, within: tuple[float, float] | None = None,
                 pad: float = 0.02) -> tuple[float, float] | None:
    """A colour or axis range from percentiles ``q`` of the finite ``values`` (one spike cannot
    flatten the scale), clamped to ``within`` and padded by ``pad`` of its width; None when empty."""
    v = np.asarray(values, float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    lo, hi = (float(x) for x in np.percentile(v, q))
    if within is not None:
        lo, hi = max(lo, within[0]), min(hi, within[1])
    if not hi > lo:
        mid = 0.5 * (lo + hi)
        half = max(abs(mid) * 0.02, 1e-6)
        lo, hi = mid - half, mid + half
    w = hi - lo
    return lo - pad * w, hi + pad * w


def _hover_extra(shape, other: tuple[str, np.ndarray] | None, flags, scale: float = 100.0, unit: str = "%") -> np.ndarray:
    """Per cell, the hover lines after the value: the other quantity (omitted where it is undefined, never a
    blank '-%') and the flags (omitted where none). Each line starts with '<br>'."""
    out = np.full(shape, "", dtype=object)
    if other is not None:
        o = np.asarray(other[1], float) * scale
        ok = np.isfinite(o)
        out[ok] = np.char.add(f"<br>{other[0]} ", np.char.add(np.char.mod("%.2f", o[ok]), unit)).astype(object)
    ft = flag_text(flags, shape)
    has = ft != ""
    out[has] = out[has] + "<br>flags: " + ft[has]
    return out


def _f32(a) -> np.ndarray:
    """float32 copy (half the bytes sent to the browser; 7 significant digits are plenty for a chart)."""
    return np.asarray(a, dtype=np.float32)


def thin(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``limit`` of ``n`` points (all when ``n <= limit``), chosen at random with a fixed
    seed so that reruns draw the same points; sorted."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


MAX_POINTS_3D = 2500      # market quotes drawn on a 3D surface (WebGL cost grows with the points)
_SCENE_LAYOUT = dict(margin=dict(l=0, r=0, t=36, b=0), template="plotly_white", hovermode="closest")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) within ``[lo, hi]``."""
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        return []
    raw = (hi - lo) / max(n, 1)
    mag = 10.0 ** np.floor(np.log10(raw))
    step = min((m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0)), key=lambda st: abs(np.log(st / raw)))
    first = np.ceil(lo / step) * step
    return [float(round(v, 10)) for v in np.arange(first, hi + 1e-9 * step, step)]


def colorbar(title: str, band: tuple[float, float] | None = None, zrange: tuple[float, float] | None = None) -> dict:
    """A colour bar whose title names the quantity and, for local vol, the clip band; the band's edges
    get ticks when they fall inside the colour range (values in the figure's units, percent)."""
    cb = dict(title=dict(text=title, side="right"), thickness=12, len=0.8)
    if band is not None:
        lo, hi = band
        cb["title"]["text"] = f"{title}<br><sub>clip band {lo:g}-{hi:g}%</sub>"
        if zrange is not None:
            marks = [v for v in (lo, hi) if zrange[0] <= v <= zrange[1]]
            if marks:
                ticks = nice_ticks(zrange[0], zrange[1])
                ticks = [t for t in ticks if all(abs(t - m) > 0.08 * (zrange[1] - zrange[0]) for m in marks)]
                vals = sorted(ticks + marks)
                cb["tickvals"] = vals
                cb["ticktext"] = [(f"{v:g}% {'floor' if v == lo else 'cap'}" if v in marks else f"{v:g}") for v in vals]
    return cb


def surface_3d(x, T, Z, *, title: str, zlabel: str, xlabel: str = "strike",
               flags: Mapping[str, np.ndarray] | None = None,
               other: tuple[str, np.ndarray] | None = None,
               points: Mapping[str, np.ndarray] | None = None,
               colorscale: str = IMPLIED_SCALE, zrange: tuple[float, float] | None = None,
               band: tuple[float, float] | None = None, max_points: int = MAX_POINTS_3D,
               height: int = 520, aspect: tuple[float, float, float] = (1.9, 1.3, 0.85)) -> go.Figure:
    """A rotatable 3D surface of a vol grid over (x, T), flagged cells as markers on it.

    ``x``: (n_K,) or (n_T, n_K) strikes or moneyness; ``T``: (n_T,) years; ``Z``: (n_T, n_K) vols as
    fractions. ``flags``: name -> bool grid (names of ``FLAG_STYLE``). ``other``: (label, grid) shown
    in the hover too (e.g. implied vol on the local-vol surface). ``points``: market quotes
    ``{"x", "T", "iv"}`` drawn as dots (at most ``max_points``, a fixed random subset: the count is in
    the legend). ``zrange``: colour range (fractions; ``robust_range``); ``band``: the clip band
    (fractions) named on the colour bar. The hover names x, T, the vols and the flags, never a blank.
    ``height`` (px) and ``aspect`` (x, y, z box ratios) fit the scene to a wide chart without dead space.
    """
    x, T, Z = _grid(x, T, Z)
    X = np.broadcast_to(x, Z.shape) if x.ndim == 1 else x
    Tg = np.broadcast_to(T[:, None], Z.shape)
    text = _hover_extra(Z.shape, other, flags)
    hover = f"{xlabel} %{{x:.4g}}<br>T %{{y:.3f}} y<br>{zlabel} %{{z:.2f}}%%{{text}}<extra></extra>"
    zr = None if zrange is None else (zrange[0] * 100, zrange[1] * 100)
    bd = None if band is None else (band[0] * 100, band[1] * 100)
    fig = go.Figure()
    fig.add_trace(go.Surface(
        x=_f32(X), y=_f32(Tg), z=_f32(Z * 100.0), colorscale=colorscale, text=text,
        hovertemplate=hover, name=zlabel,
        cmin=None if zr is None else zr[0], cmax=None if zr is None else zr[1],
        colorbar=colorbar(f"{zlabel} %", bd, zr),
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
                x=_f32(X[m]), y=_f32(Tg[m]), z=_f32(Z[m] * 100.0), mode="markers", name=f"{label} ({int(m.sum())})",
                marker=dict(size=2 if name == "extrapolated" else 3, color=colour, symbol=sym3, opacity=0.8),
                hovertemplate=f"{label}<br>{xlabel} %{{x:.4g}}<br>T %{{y:.3f}} y<br>{zlabel} %{{z:.2f}}%<extra></extra>",
            ))
    if points is not None and len(np.asarray(points["x"])):
        px = np.asarray(points["x"], float)
        keep = thin(px.size, max_points)
        shown = f"market quotes (mid, {keep.size:,} of {px.size:,})" if keep.size < px.size else "market quotes (mid)"
        fig.add_trace(go.Scatter3d(
            x=_f32(px[keep]), y=_f32(np.asarray(points["T"], float)[keep]),
            z=_f32(np.asarray(points["iv"], float)[keep] * 100.0), mode="markers", name=shown,
            marker=dict(size=1.6, color=QUOTE_COLOUR, opacity=0.6),
            hovertemplate=f"quote<br>{xlabel} %{{x:.4g}}<br>T %{{y:.3f}} y<br>mid iv %{{z:.2f}}%<extra></extra>",
        ))
    fig.update_layout(
        title=dict(text=title, x=0.01, y=0.98, yanchor="top", font=dict(size=15)), height=height, **_SCENE_LAYOUT,
        showlegend=True,
        legend=dict(orientation="h", yanchor="bottom", y=0.0, x=0.0, bgcolor="rgba(255,255,255,0.6)"),
        scene=dict(domain=dict(x=[0.0, 0.95], y=[0.04, 1.0]),
                   xaxis=dict(title=dict(text=xlabel)), yaxis=dict(title=dict(text="T (years)")),
                   zaxis=dict(title=dict(text=f"{zlabel} (%)")),
                   aspectmode="manual", aspectratio=dict(x=aspect[0], y=aspect[1], z=aspect[2]),
                   camera=dict(eye=dict(x=1.35, y=-2.0, z=0.8), center=dict(x=0.0, y=0.0, z=-0.2))),
    )
    return fig


def heatmap(x, T, Z, *, title: str, zlabel: str, xlabel: str = "strike",
            flags: Mapping[str, np.ndarray] | None = None,
            other: tuple[str, np.ndarray] | None = None,
            colorscale: str = LOCAL_SCALE, zrange: tuple[float, float] | None = None,
            zmid: float | None = None, percent: bool = True, fmt: str = ".2f",
            band: tuple[float, float] | None = None) -> go.Figure:
    """A heatmap of a grid over (x, T) (x 1D), flagged cells marked with ``FLAG_STYLE`` symbols.

    ``percent``: multiply by 100 and label with '%' (vols); otherwise raw values (g, dw/dT).
    ``zmid``: centre of a diverging colour scale (0 for g and dw/dT, so negatives stand out).
    ``zrange``: colour range in the grid's units (fractions for vols; ``robust_range``); ``band``: the
    clip band (fractions) named and ticked on the colour bar.
    """
    x, T, Z = _grid(x, T, Z)
    if x.ndim != 1:
        raise ValueError("heatmap needs a 1D x (strikes or K/S); use surface_3d for a 2D x")
    scale = 100.0 if percent else 1.0
    unit = "%" if percent else ""
    text = _hover_extra(Z.shape, other, flags)
    hover = f"{xlabel} %{{x:.4g}}<br>T %{{y:.3f}} y<br>{zlabel} %{{z:{fmt}}}{unit}%{{text}}<extra></extra>"
    zr = None if zrange is None else (zrange[0] * scale, zrange[1] * scale)
    bd = None if band is None else (band[0] * scale, band[1] * scale)
    fig = go.Figure(go.Heatmap(
        x=_f32(x), y=_f32(T), z=_f32(Z * scale), colorscale=colorscale, text=text, hovertemplate=hover,
        zmin=None if zr is None else zr[0], zmax=None if zr is None else zr[1],
        zmid=zmid, colorbar=colorbar(f"{zlabel} {unit}".strip(), bd, zr), name=zlabel,
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
                x=_f32(X[m]), y=_f32(Tg[m]), mode="markers", name=f"{label} ({int(m.sum())})",
                marker=dict(size=4 if name == "extrapolated" else 5, color=colour, symbol=sym2, opacity=0.7,
                            line=dict(width=1, color=colour)),
                hovertemplate=f"{label}<br>{xlabel} %{{x:.4g}}<br>T %{{y:.3f}} y<extra></extra>",
            ))
    fig.update_layout(title=dict(text=title, x=0.01), height=430, xaxis_title=xlabel, yaxis_title="T (years)",
                      **_LAYOUT, legend=dict(orientation="h", yanchor="top", y=-0.15, x=0))
    return fig


def smile(x_quotes, iv_bid, iv_ask, iv_mid, x_grid, iv_fit, local_vol=None, *, title: str,
          xlabel: str = "strike", used=None, show_all: bool = False) -> go.Figure:
    """One expiry's smile: quotes as bid/ask bars (mid dot), the fitted implied vol, the local-vol slice.

    ``x_quotes``, ``iv_bid``, ``iv_ask``, ``iv_mid``: (n,) per quote (NaN bid iv: the bar starts at 0).
    ``x_grid``, ``iv_fit``, ``local_vol``: (m,) curves, drawn first. ``used``: (n,) bool, quotes the fit
    used (drawn last, on top, in colour; the others pale grey, underneath them). The axes are scaled to the used quotes (a few
    percent of padding) unless ``show_all``: far-wing quotes would squash the part that matters.
    """
    xq = np.asarray(x_quotes, float)
    lo = np.asarray(iv_bid, float)
    hi = np.asarray(iv_ask, float)
    mid = np.asarray(iv_mid, float)
    used = np.ones(xq.shape, bool) if used is None else np.asarray(used, bool)
    lo_f = np.where(np.isfinite(lo), lo, 0.0)
    centre = np.where(np.isfinite(mid), mid, 0.5 * (lo_f + hi))
    xg = np.asarray(x_grid, float)
    fit = np.asarray(iv_fit, float)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xg, y=fit * 100, mode="lines",
                             name="fitted implied vol", line=dict(color=FIT_COLOUR, width=2.5),
                             hovertemplate=f"{xlabel} %{{x:.5g}}<br>implied %{{y:.2f}}%<extra></extra>"))
    if local_vol is not None:
        fig.add_trace(go.Scatter(x=xg, y=np.asarray(local_vol, float) * 100,
                                 mode="lines", name="local vol", line=dict(color=LOCAL_COLOUR, width=2, dash="dash"),
                                 hovertemplate=f"{xlabel} %{{x:.5g}}<br>local %{{y:.2f}}%<extra></extra>"))
    for mask, name, colour, size, thick in ((~used, "market bid/ask (not used)", "rgba(150,150,150,0.35)", 3, 1.0),
                                            (used, "market bid/ask (used)", BID_ASK_COLOUR, 4, 1.5)):
        if not mask.any():
            continue
        fig.add_trace(go.Scatter(
            x=xq[mask], y=centre[mask] * 100, mode="markers", name=name,
            marker=dict(size=size, color=colour),
            error_y=dict(type="data", symmetric=False, array=(hi - centre)[mask] * 100,
                         arrayminus=(centre - lo_f)[mask] * 100, color=colour, thickness=thick, width=0),
            customdata=np.c_[np.nan_to_num(lo[mask] * 100, nan=0.0), hi[mask] * 100],
            hovertemplate=f"{xlabel} %{{x:.5g}}<br>bid iv %{{customdata[0]:.2f}}%<br>ask iv %{{customdata[1]:.2f}}%<extra></extra>",
        ))
    focus_x = xq[used] if (used.any() and not show_all) else xq
    xrange = None
    if focus_x.size:
        a, b = float(np.nanmin(focus_x)), float(np.nanmax(focus_x))
        pad = 0.04 * max(b - a, 1e-9 + 0.01 * abs(a))
        xrange = [a - pad, b + pad]
    # vertical range from what is in view: the used quotes' bid/ask and the fit over that strike range
    inx = np.ones(xq.shape, bool) if xrange is None else (xq >= xrange[0]) & (xq <= xrange[1])
    ing = np.ones(xg.shape, bool) if xrange is None else (xg >= xrange[0]) & (xg <= xrange[1])
    sel = (used & inx) if not show_all else inx
    focus = np.r_[fit[ing], lo[sel & np.isfinite(lo)], hi[sel & np.isfinite(hi)]]
    focus = focus[np.isfinite(focus)]
    yrange = None
    if focus.size:
        a, b = float(focus.min()) * 100, float(focus.max()) * 100
        pad = 0.08 * max(b - a, 1.0)
        yrange = [max(0.0, a - pad), b + pad]
    fig.update_layout(title=title, height=440, xaxis_title=xlabel, yaxis_title="vol (%)", **_LAYOUT,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    if xrange is not None:
        fig.update_xaxes(range=xrange)
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


MAX_POINTS_2D = 2000      # quotes drawn on the round-trip map (all those outside the band first)


def roundtrip(x, rows, error_bp, half_band_bp, *, title: str, xlabel: str = "strike",
              ylabel: str = "expiry", row_order: Sequence[str] | None = None,
              max_points: int = MAX_POINTS_2D) -> go.Figure:
    """Repriced minus market implied vol per quote (vol bp) as a map over (x, expiry row), coloured on a
    diverging scale centred at 0 that saturates at the 98th percentile of |error| (one outlier cannot
    wash the map out). Quotes outside their half bid/ask band are a separate trace with a thin dark
    ring, drawn underneath the ones inside. ``rows``: (n,) expiry labels (one row per expiry) or
    numbers; ``row_order``: the labels in time order. At most ``max_points`` are drawn (SVG: at 2,000
    points it draws faster than WebGL's start-up where the browser has no graphics card): every quote
    outside the band (up to that many), then a fixed random share of those inside (the legend says how
    many of how many)."""
    x = np.asarray(x, float)
    rows = np.asarray(rows)
    e = np.asarray(error_bp, float)
    h = np.asarray(half_band_bp, float)
    inside = np.abs(e) <= h
    fin = np.abs(e[np.isfinite(e)])
    lim = float(np.percentile(fin, 98)) if fin.size else 1.0
    lim = max(lim, 1.0)
    out_idx = np.flatnonzero(~inside)
    in_idx = np.flatnonzero(inside)
    out_idx = out_idx[thin(out_idx.size, max_points)]
    in_idx = in_idx[thin(in_idx.size, max(0, max_points - out_idx.size), seed=1)]
    fig = go.Figure()
    for idx, total, name, line, show_bar in (
            (out_idx, int((~inside).sum()), "outside the bid/ask band (ringed)", dict(width=1, color="#444"), False),
            (in_idx, int(inside.sum()), "inside the bid/ask band", dict(width=0), True)):
        if not idx.size:
            continue
        if idx.size < total:
            name = f"{name}, {idx.size:,} of {total:,} drawn"
        fig.add_trace(go.Scatter(
            x=_f32(x[idx]), y=rows[idx], mode="markers", name=name,
            marker=dict(size=6, color=_f32(e[idx]), colorscale=DIVERGING_SCALE, cmin=-lim, cmax=lim, reversescale=True,
                        showscale=show_bar or not in_idx.size,
                        colorbar=dict(title=dict(text="bp"), thickness=12), line=line),
            customdata=np.c_[_f32(h[idx]), _f32(e[idx])],
            hovertemplate=f"{xlabel} %{{x:.4g}}<br>{ylabel} %{{y}}<br>repriced - market %{{customdata[1]:.1f}} bp"
                          "<br>half bid/ask %{customdata[0]:.1f} bp<extra>" + name.split(" (")[0].split(",")[0] + "</extra>",
        ))
    fig.update_layout(title=title, height=max(420, min(900, 16 * len(_unique(rows)) + 180)), xaxis_title=xlabel,
                      yaxis_title=ylabel, **_LAYOUT, legend=dict(orientation="h", yanchor="top", y=-0.08, x=0))
    if rows.dtype.kind in "OUS":
        if row_order is not None:
            fig.update_yaxes(type="category", categoryorder="array", categoryarray=list(row_order))
        else:
            fig.update_yaxes(type="category", categoryorder="category ascending")
    return fig


def _unique(a) -> list:
    """Distinct values in order of appearance."""
    return list(dict.fromkeys(np.asarray(a).tolist()))


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
