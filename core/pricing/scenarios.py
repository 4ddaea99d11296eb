"""Scenario shocks on the implied surface, with the local vol and the prices re-run.

A shock moves the implied vol at fixed log-moneyness: ``sigma'(y, T) = sqrt(w(y + delta, T)/T) + s(y, T)``
and ``w' = sigma'^2 T``, with
``s(y, T) = parallel + skew * y * h(T) + term * f(T)`` (vol points as decimals: 0.01 = 1 vol point),
``h = 1`` or ``1/sqrt(T)`` (skew tilt), ``f(T) = sqrt(T_ref/T)`` or ``exp(-T/T_ref)`` (term tilt:
more at the short end). A spot move ``m`` scales spot and every forward by ``1 + m``; sticky
moneyness keeps the surface in ``y`` (``delta = 0``), sticky strike keeps the vol of each strike
(``delta = ln(1 + m)``: the old ``y`` of a strike is ``y_new + delta``). The shocked surface is a
``VolSurface`` with analytic derivatives (differentiating ``w'`` by the chain rule), so Gatheral's
local vol needs no finite differences.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.black import black_price
from core.errors import InputError
from core.forwards import Forwards
from core.localvol import DEFAULT_CLIP, local_vol_grid
from core.pricing.exotics import price_mc
from core.pricing.pde import forward_dupire
from core.surface.base import Derivatives, VolSurface

SKEW_SCALINGS = ("flat", "sqrt")
TERM_SHAPES = ("inv_sqrt", "exp")
STICKY = ("strike", "moneyness")


@dataclass(frozen=True)
class Scenario:
    """One shock. ``parallel``, ``skew``, ``term`` in vol (decimal, 0.01 = 1 vol point; ``skew`` per
    unit of ``y``); ``skew_scaling`` ``"flat"`` (``s = skew y``) or ``"sqrt"`` (``s = skew y / sqrt T``);
    ``term_shape`` ``"inv_sqrt"`` (``sqrt(T_ref/T)``) or ``"exp"`` (``exp(-T/T_ref)``) with ``T_ref``
    years; ``spot_move`` relative (0.05 = +5%); ``sticky`` ``"strike"`` or ``"moneyness"``."""

    name: str
    parallel: float = 0.0
    skew: float = 0.0
    skew_scaling: str = "flat"
    term: float = 0.0
    term_shape: str = "inv_sqrt"
    T_ref: float = 1.0
    spot_move: float = 0.0
    sticky: str = "moneyness"

    def __post_init__(self) -> None:
        if self.skew_scaling not in SKEW_SCALINGS:
            raise InputError(f"skew_scaling must be one of {SKEW_SCALINGS}, got {self.skew_scaling!r}")
        if self.term_shape not in TERM_SHAPES:
            raise InputError(f"term_shape must be one of {TERM_SHAPES}, got {self.term_shape!r}")
        if self.sticky not in STICKY:
            raise InputError(f"sticky must be one of {STICKY}, got {self.sticky!r}")
        if not (self.T_ref > 0):
            raise InputError(f"T_ref must be positive (years), got {self.T_ref!r}")
        if not (self.spot_move > -1.0):
            raise InputError(f"spot_move must be > -1 (a relative move), got {self.spot_move!r}")
        for k in ("parallel", "skew", "term", "spot_move"):
            if not np.isfinite(getattr(self, k)):
                raise InputError(f"Scenario.{k} must be finite")


class ShockedSurface(VolSurface):
    """``base`` with ``sigma' = sqrt(w(y + delta, T)/T) + s(y, T)`` (module docstring), analytic derivatives.

    With ``v = sqrt(w/T)``, ``sigma' = v + s``:
    ``w'_y = 2 T sigma' (v_y + s_y)``, ``w'_yy = 2 T ((v_y + s_y)^2 + sigma' v_yy)``,
    ``w'_T = sigma'^2 + 2 T sigma' (v_T + s_T)``, where ``v_y = w_y/(2 T v)``,
    ``v_yy = w_yy/(2 T v) - w_y^2/(4 T^2 v^3)``, ``v_T = (w_T/T - w/T^2)/(2 v)``.
    Where ``sigma' < 0`` the shock is too large: ``w'`` is set to 0 there (counted in ``n_negative``).
    """

    def __init__(self, base: VolSurface, scenario: Scenario):
        self.base, self.sc = base, scenario
        self.delta = np.log1p(scenario.spot_move) if scenario.sticky == "strike" else 0.0
        self.T_quoted = base.T_quoted
        self.n_negative = 0

    def _shock(self, y, T):
        sc = self.sc
        if sc.skew_scaling == "flat":
            h, dh = np.ones_like(T), np.zeros_like(T)
        else:
            h = 1.0 / np.sqrt(T)
            dh = -0.5 * h / T
        if sc.term_shape == "inv_sqrt":
            f = np.sqrt(sc.T_ref / T)
            df = -0.5 * f / T
        else:
            f = np.exp(-T / sc.T_ref)
            df = -f / sc.T_ref
        s = sc.parallel + sc.skew * y * h + sc.term * f
        return s, sc.skew * h, sc.skew * y * dh + sc.term * df

    def derivatives(self, y, T) -> Derivatives:
        y, T = np.broadcast_arrays(np.asarray(y, float), np.asarray(T, float))
        d = self.base.derivatives(y + self.delta, T)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.sqrt(np.maximum(d.w, 0.0) / T)
            v_y = d.w_y / (2 * T * v)
            v_yy = d.w_yy / (2 * T * v) - d.w_y**2 / (4 * T**2 * v**3)
            v_T = (d.w_T / T - d.w / T**2) / (2 * v)
            s, s_y, s_T = self._shock(y, T)
            sig = v + s
            neg = sig < 0
            self.n_negative += int(np.count_nonzero(neg))
            sig = np.where(neg, 0.0, sig)
            w = sig * sig * T
            w_y = 2 * T * sig * (v_y + s_y)
            w_yy = 2 * T * ((v_y + s_y) ** 2 + sig * v_yy)
            w_T = sig * sig + 2 * T * sig * (v_T + s_T)
        return Derivatives(w=w, w_y=w_y, w_yy=w_yy, w_T=w_T)

    def y_quoted(self, T):
        lo, hi = self.base.y_quoted(T)
        return lo - self.delta, hi - self.delta


def shocked_forwards(forwards: Forwards, spot_move: float) -> Forwards:
    """Spot and every forward scaled by ``1 + spot_move`` (discount factors unchanged)."""
    t = forwards.table.copy()
    t["F"] = t["F"] * (1.0 + spot_move)
    spot = None if forwards.spot is None else forwards.spot * (1.0 + spot_move)
    return Forwards(table=t, spot=spot)


@dataclass(frozen=True)
class Instruments:
    """What to price in each scenario: vanillas at ``strikes`` (nK,) x ``expiries`` (nT,) (out of the
    money side, ``K >= F`` calls, else puts), and optional exotics: ``core.pricing.products`` ``Barrier`` or
    ``Asian`` terms priced by ``core.pricing.exotics.price_mc``; ``mc`` keyword arguments for it (``n_paths``,
    ``n_steps``, ``seed``)."""

    strikes: np.ndarray
    expiries: np.ndarray
    exotics: tuple = ()
    mc: dict = field(default_factory=lambda: {"n_paths": 20_000, "n_steps": 100, "seed": 7})


@dataclass(frozen=True)
class ScenarioResult:
    """Before/after tables. ``vanillas``: one row per scenario x expiry x strike: ``scenario, T, strike,
    cp, iv_before, iv_after, d_iv_bp, price_before, price_after, d_price`` (Black prices of the surface)
    and ``price_pde_after`` (the re-run local vol, forward Dupire), ``pde_error_bp`` (its round-trip
    error). ``local_vol``: ATM local vol per scenario and expiry before/after. ``exotics``: per scenario
    and exotic, local-vol prices before/after with standard errors. ``lv_source``: which local vol ran.
    """

    vanillas: pd.DataFrame
    local_vol: pd.DataFrame
    exotics: pd.DataFrame
    lv_source: str
    seconds: float


def _local_vol(surface, forwards, clip, strikes, expiries):
    """The re-run local vol: ``core.localvol.local_vol_grid`` on a grid (120 dates from one day to the
    last expiry, 321 strikes over +-8 ATM standard deviations, plus the instruments' own), read through
    its interpolator. Returns ``(lv, source label)``."""
    T_hi = float(np.max(expiries))
    Tg = np.unique(np.r_[np.geomspace(1.0 / 365.0, T_hi, 120), np.asarray(expiries, float)])
    F_hi = float(forwards.F(T_hi))
    sd = 8.0 * float(np.sqrt(np.nanmax(surface.w(0.0, T_hi))))
    Kg = F_hi * np.exp(np.linspace(-max(sd, 1.0), max(sd, 1.0), 321))
    Kg = np.unique(np.r_[Kg, np.asarray(strikes, float)])
    res = local_vol_grid(surface, forwards, Kg, Tg, clip=clip)
    return res.interpolator(), "core.localvol.local_vol_grid"


def run_scenarios(surface: VolSurface, forwards: Forwards, scenarios, instruments: Instruments, *,
                  clip=DEFAULT_CLIP, pde_grid: dict | None = None) -> ScenarioResult:
    """Apply each scenario to ``surface``/``forwards``, re-run local vol and prices; before/after tables.

    Parameters: ``surface`` the implied surface; ``forwards``; ``scenarios`` a list of ``Scenario``;
    ``instruments`` an ``Instruments``; ``clip`` local-vol bounds; ``pde_grid`` forwarded to
    ``forward_dupire``. The 'before' state is priced once.
    """
    t0 = time.perf_counter()
    K = np.asarray(instruments.strikes, float).ravel()
    T = np.unique(np.asarray(instruments.expiries, float).ravel())
    if K.size == 0 or T.size == 0 or np.any(K <= 0) or np.any(T <= 0):
        raise InputError("instruments need positive strikes and expiries")
    pde_grid = dict(pde_grid or {})
    KK, TT = np.meshgrid(K, T)

    def state(surf, fw):
        F, D = fw.F(TT), fw.D(TT)
        cp = np.where(KK >= F, 1.0, -1.0)
        iv = surf.implied_vol(np.log(KK / F), TT)
        price = black_price(F, KK, TT, iv, cp, D)
        lv, src = _local_vol(surf, fw, clip, K, T)
        pde = forward_dupire(lv, fw, T, K, **pde_grid)
        p_pde = pde.price(KK, TT, cp)
        iv_pde = pde.implied_vol(KK, TT)
        atm = np.asarray(lv(fw.F(T), T), float)
        ex = []
        for product in instruments.exotics:
            ex.append(price_mc(lv, fw, product, **instruments.mc))
        return dict(cp=cp, iv=iv, price=price, p_pde=p_pde, iv_pde=iv_pde, atm=atm, ex=ex, src=src)

    before = state(surface, forwards)
    v_rows, l_rows, e_rows = [], [], []
    for sc in scenarios:
        if not isinstance(sc, Scenario):
            raise InputError(f"scenarios must be Scenario objects, got {type(sc).__name__}")
        surf = ShockedSurface(surface, sc)
        fw = shocked_forwards(forwards, sc.spot_move) if sc.spot_move else forwards
        after = state(surf, fw)
        for i, Ti in enumerate(T):
            l_rows.append({"scenario": sc.name, "T": Ti, "atm_lv_before": before["atm"][i],
                           "atm_lv_after": after["atm"][i]})
            for j, Kj in enumerate(K):
                v_rows.append({
                    "scenario": sc.name, "T": Ti, "strike": Kj, "cp": int(after["cp"][i, j]),
                    "iv_before": before["iv"][i, j], "iv_after": after["iv"][i, j],
                    "d_iv_bp": 1e4 * (after["iv"][i, j] - before["iv"][i, j]),
                    "price_before": before["price"][i, j] if before["cp"][i, j] == after["cp"][i, j]
                    else before["price"][i, j] + after["cp"][i, j] * forwards.D(Ti) * (forwards.F(Ti) - Kj),
                    "price_after": after["price"][i, j],
                    "price_pde_after": after["p_pde"][i, j],
                    "pde_error_bp": 1e4 * (after["iv_pde"][i, j] - after["iv"][i, j]),
                })
        for rb, ra in zip(before["ex"], after["ex"], strict=True):
            e_rows.append({"scenario": sc.name, **{k: v for k, v in ra.product.items()},
                           "price_before": rb.price_lv, "se_before": rb.se_lv,
                           "price_after": ra.price_lv, "se_after": ra.se_lv,
                           "change": ra.price_lv - rb.price_lv,
                           "bs_before": rb.price_bs, "bs_after": ra.price_bs})
        if surf.n_negative:
            warnings.warn(f"scenario {sc.name!r}: the shock makes the vol negative at {surf.n_negative} "
                          "points (set to 0 there)", stacklevel=2)
    v = pd.DataFrame(v_rows)
    if len(v):
        v["d_price"] = v["price_after"] - v["price_before"]
    return ScenarioResult(vanillas=v, local_vol=pd.DataFrame(l_rows), exotics=pd.DataFrame(e_rows),
                          lv_source=before["src"], seconds=time.perf_counter() - t0)
