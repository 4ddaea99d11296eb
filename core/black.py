"""Black-76 prices, vega and implied volatility on broadcastable arrays (forward terms).

``C = D [F N(d1) - K N(d2)]``, ``P = D [K N(-d2) - F N(-d1)]``, ``d1 = -y/s + s/2``, ``d2 = d1 - s``,
``s = sigma sqrt(T)``, ``y = ln(K/F)`` (Black 1976; MATH.md). Discounting is a separate factor ``D``.
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtr

IV_REASONS = ("ok", "non_finite", "non_positive", "below_intrinsic", "above_upper_bound")


def _arrays(*args):
    return np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in args))


def black_price(F, K, T, sigma, cp, D=1.0):
    """Discounted Black-76 price. ``F`` forward, ``K`` strike, ``T`` years, ``sigma`` vol, ``cp`` +1/-1, ``D`` discount.

    All arguments broadcast; returns an array of the broadcast shape (a 0-d array for scalars).
    ``sigma sqrt(T) = 0`` gives the discounted intrinsic value.
    """
    F, K, T, sigma, cp, D = _arrays(F, K, T, sigma, cp, D)
    s = sigma * np.sqrt(T)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(K / F)
        d1 = -y / s + 0.5 * s
        d2 = d1 - s
        price = D * cp * (F * ndtr(cp * d1) - K * ndtr(cp * d2))
    intrinsic = D * np.maximum(cp * (F - K), 0.0)
    return np.where(s > 0, price, intrinsic)


def black_vega(F, K, T, sigma, D=1.0):
    """Black-76 vega ``dPrice/dsigma = D F n(d1) sqrt(T)`` (same for calls and puts)."""
    F, K, T, sigma, D = _arrays(F, K, T, sigma, D)
    s = sigma * np.sqrt(T)
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = -np.log(K / F) / s + 0.5 * s
        return D * F * np.exp(-0.5 * d1 * d1) / np.sqrt(2.0 * np.pi) * np.sqrt(T)


def implied_vol(price, F, K, T, cp, D=1.0, *, return_reason: bool = False):
    """Black-76 implied vol of discounted prices (vectorised; NaN outside the no-arbitrage bounds).

    PROVISIONAL safeguarded Newton/bisection; replaced by the Let's-Be-Rational-grade solver.
    With ``return_reason=True`` returns ``(vol, reason)`` where reason is an array of strings from
    ``IV_REASONS``.
    """
    price, F, K, T, cp, D = _arrays(price, F, K, T, cp, D)
    shape = price.shape
    p = (price / np.where(D > 0, D, np.nan)).ravel()
    F, K, T, cp = F.ravel(), K.ravel(), T.ravel(), np.sign(cp.ravel())
    reason = np.full(p.shape, "ok", dtype=object)
    finite = np.isfinite(p) & np.isfinite(F) & np.isfinite(K) & np.isfinite(T) & np.isfinite(D.ravel())
    reason[~finite] = "non_finite"
    pos = finite & (F > 0) & (K > 0) & (T > 0) & (D.ravel() > 0) & (p > 0) & (cp != 0)
    reason[finite & ~pos] = "non_positive"
    intrinsic = np.maximum(cp * (F - K), 0.0)
    upper = np.where(cp > 0, F, K)
    below = pos & (p <= intrinsic)
    above = pos & (p >= upper)
    reason[below] = "below_intrinsic"
    reason[above] = "above_upper_bound"
    ok = pos & ~below & ~above
    lo = np.full(p.shape, 1e-8)
    hi = np.full(p.shape, 50.0)
    vol = np.full(p.shape, np.nan)
    with np.errstate(all="ignore"):
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            pm = black_price(F, K, T, mid, cp)
            up = pm > p
            hi = np.where(up, mid, hi)
            lo = np.where(up, lo, mid)
    vol[ok] = (0.5 * (lo + hi))[ok]
    vol = vol.reshape(shape)
    if return_reason:
        return vol, reason.reshape(shape)
    return vol
