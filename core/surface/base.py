"""The surface contract: total implied variance ``w(y, T)`` with analytic derivatives.

Every fitted surface (SSVI, SVI per slice, non-parametric smooth) subclasses ``VolSurface`` and
answers ``derivatives(y, T)`` in closed form: no finite differences anywhere downstream. Inputs
broadcast like numpy; ``y = ln(K/F_T)``, ``T`` in years.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Derivatives:
    """``w`` and its partial derivatives at fixed ``y`` / fixed ``T``, all of one broadcast shape."""

    w: np.ndarray
    w_y: np.ndarray
    w_yy: np.ndarray
    w_T: np.ndarray


def butterfly_g(y, w, w_y, w_yy):
    """Gatheral's density function ``g(y)``; butterfly-free iff ``g >= 0`` (Gatheral & Jacquier 2014, Lemma 2.2).

    ``g = (1 - y w'/(2w))^2 - (w'^2 / 4)(1/w + 1/4) + w''/2``, equal to the expanded form of MATH.md.
    """
    y, w, w_y, w_yy = (np.asarray(a, dtype=float) for a in (y, w, w_y, w_yy))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (1.0 - y * w_y / (2.0 * w)) ** 2 - 0.25 * w_y**2 * (1.0 / w + 0.25) + 0.5 * w_yy


def butterfly_g_grad(y, w, w_y, w_yy):
    """``g`` and its partial derivatives ``(dg/dw, dg/dw_y, dg/dw_yy)`` (closed form of ``butterfly_g``), for
    linearising the butterfly condition in a fit. Arrays broadcast; ``w > 0``."""
    y, w, w_y = (np.asarray(a, dtype=float) for a in (y, w, w_y))
    A = 1.0 - y * w_y / (2.0 * w)
    g = A * A - w_y * w_y / (4.0 * w) - w_y * w_y / 16.0 + 0.5 * np.asarray(w_yy, dtype=float)
    g_w = A * y * w_y / (w * w) + w_y * w_y / (4.0 * w * w)
    g_wy = -A * y / w - w_y / (2.0 * w) - w_y / 8.0
    return g, g_w, g_wy, 0.5


class VolSurface(ABC):
    """Total implied variance ``w(y, T)`` with analytic derivatives (abstract).

    Subclasses implement ``derivatives``; ``w`` and ``implied_vol`` follow. ``T_quoted`` is the
    range of quoted expiries and ``y_quoted(T)`` the quoted log-moneyness range at ``T`` (for the
    'extrapolated' flag); subclasses may refine the defaults.
    """

    T_quoted: tuple[float, float] = (0.0, np.inf)

    @abstractmethod
    def derivatives(self, y, T) -> Derivatives:
        """``w, dw/dy, d2w/dy2, dw/dT`` at ``(y, T)`` (broadcast arrays)."""

    def w(self, y, T) -> np.ndarray:
        """Total implied variance ``sigma_imp^2 T`` at ``(y, T)``."""
        return self.derivatives(y, T).w

    def implied_vol(self, y, T) -> np.ndarray:
        """Black implied vol ``sqrt(w / T)`` at ``(y, T)``."""
        T = np.asarray(T, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.sqrt(np.maximum(self.w(y, T), 0.0) / T)

    def y_quoted(self, T) -> tuple[np.ndarray, np.ndarray]:
        """Quoted log-moneyness range ``(lo, hi)`` at ``T`` (default: unbounded)."""
        T = np.asarray(T, dtype=float)
        return np.full(T.shape, -np.inf), np.full(T.shape, np.inf)


@dataclass(frozen=True, eq=False)
class SliceData:
    """The quotes a fitter sees, grouped by expiry (``core.surface.fit`` builds it; every fitter takes it).

    ``keys`` ``(n_exp,)`` expiry keys (``core.quotes.expiry_key``) in increasing ``T``; ``T``, ``y_lo``,
    ``y_hi`` ``(n_exp,)`` each expiry's time (years) and quoted log-moneyness range; per quote ``(n,)``,
    sorted by expiry then ``y``: ``y``, ``iv`` (mid implied vol), ``weight`` (least-squares weight, mean 1),
    ``idx`` (the expiry's position in ``keys``), ``bid``/``ask`` (bid/ask implied vols, NaN where missing).
    """

    keys: tuple
    T: np.ndarray
    y: np.ndarray
    iv: np.ndarray
    weight: np.ndarray
    idx: np.ndarray
    y_lo: np.ndarray
    y_hi: np.ndarray
    bid: np.ndarray
    ask: np.ndarray


@dataclass(frozen=True, eq=False)
class ModelFit:
    """What a model's fitter returns: the ``surface``, per-expiry ``params`` (expiry key -> JSON-able dict, the
    expiries that were fitted), surface-wide ``global_params``, the ``notes`` and ``failed`` expiries
    ("key: reason") it has to report, and ``fit_weight`` (n,): the factor on each quote's weight in the model's
    final least-squares solve (robust or band-insensitive reweighting; None: every quote at its weight)."""

    surface: VolSurface
    params: dict
    global_params: dict = field(default_factory=dict)
    notes: tuple = ()
    failed: tuple = ()
    fit_weight: np.ndarray | None = None


def penalty_grid(lo: float, hi: float, n: int = 81, ext: float = 0.05) -> np.ndarray:
    """Penalty grid: the quoted range ``[lo, hi]`` widened by ``ext`` (log-moneyness) on each side."""
    return np.linspace(lo - ext, hi + ext, n)


def check_arbitrage(surface: VolSurface, T_nodes, n_y: int = 121, n_sub: int = 8) -> dict:
    """Count grid points with ``g < 0`` or ``w_T < 0`` inside the quoted range (expiries, ``n_sub - 1``
    times between consecutive ones and two more close to each end, where blended corrections turn
    fastest; ``n_y`` values of ``y`` across ``y_quoted(T)``)."""
    Tn = np.asarray(T_nodes, float)
    frac = np.unique(np.r_[np.linspace(0.0, 1.0, n_sub + 1)[:-1], 0.04, 0.96])
    Ts = [Tn[0] * np.array([0.25, 0.5, 0.75])] + [a + (b - a) * frac for a, b in zip(Tn[:-1], Tn[1:], strict=True)]
    Tg = np.unique(np.r_[np.concatenate(Ts), Tn])
    lo, hi = surface.y_quoted(Tg)
    lo = np.where(np.isfinite(lo), lo, -1.0)
    hi = np.where(np.isfinite(hi), hi, 1.0)
    u = np.linspace(0.0, 1.0, n_y)
    Y = lo[:, None] + (hi - lo)[:, None] * u[None, :]
    TT = np.broadcast_to(Tg[:, None], Y.shape)
    d = surface.derivatives(Y, TT)
    g = butterfly_g(Y, d.w, d.w_y, d.w_yy)
    bad_g = ~(g >= -1e-10)
    bad_c = ~(d.w_T >= -1e-12)
    return {"points": int(Y.size), "butterfly": int(bad_g.sum()), "calendar": int(bad_c.sum()),
            "g_min": float(np.nanmin(g)), "w_T_min": float(np.nanmin(d.w_T)),
            "butterfly_T": sorted({round(float(t), 5) for t in TT[bad_g]})[:10],
            "calendar_T": sorted({round(float(t), 5) for t in TT[bad_c]})[:10]}
