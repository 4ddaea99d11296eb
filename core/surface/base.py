"""The surface contract: total implied variance ``w(y, T)`` with analytic derivatives.

Every fitted surface (SSVI, SVI per slice, non-parametric smooth) subclasses ``VolSurface`` and
answers ``derivatives(y, T)`` in closed form: no finite differences anywhere downstream. Inputs
broadcast like numpy; ``y = ln(K/F_T)``, ``T`` in years.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

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
