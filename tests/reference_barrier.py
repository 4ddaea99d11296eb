"""Test-side closed forms for the backward PDE: Black-Scholes Greeks, cash-or-nothing digitals and
continuously monitored single barriers with rebates (Reiner & Rubinstein 1991).

Plain transcriptions kept only to check ``core.pricing.backward`` against; nothing here imports
``core`` (no ``core.black``, no ``core.pricing.exotics``). Notation of Haug, *The Complete Guide to
Option Pricing Formulas*, 2nd ed. (2007): ``b = r - q`` the cost of carry, ``phi = cp``, ``eta = +1``
for a down barrier and ``-1`` for an up barrier; sect. 1.1 (Black-Scholes-Merton and its Greeks),
sect. 4.19.1 (cash-or-nothing), sect. 4.17.1 (standard barrier options with rebate ``R``: paid at the
hit for knock-outs, at expiry if never hit for knock-ins).
"""
from __future__ import annotations

import math

from scipy.stats import norm


def bs_greeks(S: float, K: float, T: float, r: float, q: float, sigma: float, cp: int) -> dict:
    """European call/put under Black-Scholes-Merton with yield ``q``: price, delta, gamma and
    ``theta = dV/dt`` per year (calendar time passing, ``= -dV/dT``)."""
    st = sigma * math.sqrt(T)
    d1 = (math.log(S / K) + (r - q + 0.5 * sigma * sigma) * T) / st
    d2 = d1 - st
    dq, dr = math.exp(-q * T), math.exp(-r * T)
    price = cp * (S * dq * norm.cdf(cp * d1) - K * dr * norm.cdf(cp * d2))
    delta = cp * dq * norm.cdf(cp * d1)
    gamma = dq * norm.pdf(d1) / (S * st)
    theta = (-S * dq * norm.pdf(d1) * sigma / (2.0 * math.sqrt(T))
             - cp * r * K * dr * norm.cdf(cp * d2) + cp * q * S * dq * norm.cdf(cp * d1))
    return {"price": price, "delta": delta, "gamma": gamma, "theta": theta}


def digital_cash(S: float, K: float, T: float, r: float, q: float, sigma: float, cp: int) -> float:
    """Cash-or-nothing paying 1 at ``T`` if ``cp (S_T - K) > 0``: ``e^{-rT} N(cp d2)`` (Haug 4.19.1)."""
    st = sigma * math.sqrt(T)
    d2 = (math.log(S / K) + (r - q - 0.5 * sigma * sigma) * T) / st
    return math.exp(-r * T) * norm.cdf(cp * d2)


def barrier_rr(S: float, K: float, H: float, T: float, r: float, q: float, sigma: float, kind: str,
               cp: int = 1, rebate: float = 0.0) -> float:
    """Reiner-Rubinstein price of a continuously monitored single barrier with rebate (Haug 2007, 4.17.1).

    ``kind`` ``"up-and-out" | "down-and-out" | "up-and-in" | "down-and-in"``. With ``s = sigma sqrt T``,
    ``mu = (b - sigma^2/2)/sigma^2``, ``lam = sqrt(mu^2 + 2 r/sigma^2)``::

        x1 = ln(S/K)/s + (1+mu) s     x2 = ln(S/H)/s + (1+mu) s
        y1 = ln(H^2/(S K))/s + (1+mu) s    y2 = ln(H/S)/s + (1+mu) s    z = ln(H/S)/s + lam s
        A = phi S e^{(b-r)T} N(phi x1) - phi K e^{-rT} N(phi x1 - phi s)          (B: x2 for x1)
        C = phi S e^{(b-r)T} (H/S)^{2(mu+1)} N(eta y1) - phi K e^{-rT} (H/S)^{2 mu} N(eta y1 - eta s)  (D: y2)
        E = R e^{-rT} [N(eta x2 - eta s) - (H/S)^{2 mu} N(eta y2 - eta s)]        (knock-in rebate)
        F = R [(H/S)^{mu+lam} N(eta z) + (H/S)^{mu-lam} N(eta z - 2 eta lam s)]   (knock-out rebate)

    and Haug's table of the eight cases. A barrier already breached: knock-out = ``rebate``, knock-in =
    the vanilla.
    """
    up = kind.startswith("up")
    out = kind.endswith("out")
    phi, eta = float(cp), (-1.0 if up else 1.0)
    if (S >= H) if up else (S <= H):
        return rebate if out else bs_greeks(S, K, T, r, q, sigma, cp)["price"]
    b = r - q
    s = sigma * math.sqrt(T)
    mu = (b - 0.5 * sigma * sigma) / (sigma * sigma)
    lam = math.sqrt(mu * mu + 2.0 * r / (sigma * sigma))
    N = norm.cdf
    x1 = math.log(S / K) / s + (1 + mu) * s
    x2 = math.log(S / H) / s + (1 + mu) * s
    y1 = math.log(H * H / (S * K)) / s + (1 + mu) * s
    y2 = math.log(H / S) / s + (1 + mu) * s
    z = math.log(H / S) / s + lam * s
    fs, fk, hs = S * math.exp((b - r) * T), K * math.exp(-r * T), H / S
    A = phi * fs * N(phi * x1) - phi * fk * N(phi * x1 - phi * s)
    B = phi * fs * N(phi * x2) - phi * fk * N(phi * x2 - phi * s)
    C = phi * fs * hs ** (2 * (mu + 1)) * N(eta * y1) - phi * fk * hs ** (2 * mu) * N(eta * y1 - eta * s)
    D = phi * fs * hs ** (2 * (mu + 1)) * N(eta * y2) - phi * fk * hs ** (2 * mu) * N(eta * y2 - eta * s)
    E = rebate * math.exp(-r * T) * (N(eta * x2 - eta * s) - hs ** (2 * mu) * N(eta * y2 - eta * s))
    F = rebate * (hs ** (mu + lam) * N(eta * z) + hs ** (mu - lam) * N(eta * z - 2 * eta * lam * s))
    above = K > H
    call = cp > 0
    table = {  # (call?, up?, out?) -> (value for K > H, value for K <= H)
        (True, False, False): (C + E, A - B + D + E),
        (True, True, False): (A + E, B - C + D + E),
        (False, False, False): (B - C + D + E, A + E),
        (False, True, False): (A - B + D + E, C + E),
        (True, False, True): (A - C + F, B - D + F),
        (True, True, True): (F, A - B + C - D + F),
        (False, False, True): (A - B + C - D + F, F),
        (False, True, True): (B - D + F, A - C + F),
    }
    hi, lo = table[(call, up, out)]
    return hi if above else lo
