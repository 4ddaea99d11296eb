"""Risk under local vol: spot Greeks under stated dynamics, parallel and bucketed vega, skew and term sensitivities.

Spot Greeks (``spot_greeks``), three dynamics side by side, each a statement of what the implied surface does
when spot moves by ``h`` (relative; forwards scale with spot, discount factors stay):

- ``local vol``: the model's own. Local vol is a fixed function ``sigma_loc(S, t)``; delta, gamma and theta are
  read off the backward PDE's grid at ``t = 0`` (``core.pricing.backward.price_pde``). The implied smile then
  moves as the model says it does.
- ``sticky strike``: the implied vol of each strike stays: ``w'(y', T) = w(y' + ln(1 + h), T)`` with
  ``y' = ln(K / F'_T)``; local vol is recomputed from the moved surface and the product repriced.
- ``sticky moneyness``: the implied vol of each ``K / F_T`` stays (the surface in ``y`` unchanged, forwards
  moved); local vol recomputed and the product repriced.

Sticky deltas and gammas are central differences ``(P+ - P-) / (2 h S)``, ``(P+ - 2 P0 + P-) / (h S)^2``. Both moved
surfaces are ``core.pricing.scenarios.ShockedSurface`` (one home for the shocks). Black-Scholes Greeks are those
of the same product under a flat vol equal to its market implied vol (the fitted surface at its strike and
expiry), by the same PDE; for a European vanilla they are the closed forms.

Vega (``vega_buckets``): the market implied vols of all quotes (or those of one expiry x strike bucket) are
bumped, the surface refitted, local vol recomputed from it, and the product repriced; vega is the price change
per vol point. Buckets: the fitted expiries in ``n_expiry`` contiguous groups (a quote is wholly in its group),
and standardised moneyness ``z = y / (sigma_atm(T) sqrt(T))`` shared between the two nearest of ``Z_CENTRES``
by hat weights (a partition of unity: the bucket bumps add up to the parallel bump exactly). The bump is a
tenth of a vol point scaled to one point (``BUCKET_BUMP``): a full point on one narrow bucket bends the smile
enough to break the butterfly condition somewhere, where local vol falls back to implied vol, and the
difference would measure that switch rather than a sensitivity. Reprices read local vol from a lattice in
``(z, t)`` shared by the base and every bump (``lattice_local_vol``); for the spline its derivatives at the
lattice points are sparse linear forms in the coefficients, built once (``_SplineLattice``), so one bucket costs
a banded back-substitution (all buckets at once), four sparse products, Gatheral's formula on 10^4 points and
one backward PDE: about 10 ms. The buckets sum to roughly the parallel
vega; ``residual = parallel - sum`` is reported (non-linearity, lattice and PDE noise).

The fast refit (``LinearRefit``). The default surface ('spline', ``core.surface.tensor``) is a penalised
least-squares spline in implied variance: with its robust weights frozen, its coefficients are linear in the
quotes' variances, ``C = M^{-1} A' W v`` with ``M = A' W A + penalties`` banded. A bump of the quotes' vols
``dsigma`` changes variances by ``dv = 2 sigma dsigma + dsigma^2`` and the coefficients by
``dC = M^{-1} A' W dv``: one banded back-substitution per bucket with the Cholesky factor of ``M`` computed once
(all buckets in one call, as columns of the right-hand side). The arbitrage QP's active set is frozen too: the
calendar and butterfly conditions the base surface sits on (at the fit's check points) are kept as equalities
on ``dC`` (a projection with ``M^{-1} G'``, ``G`` their linear forms): without it a bump pushes ``w_T`` below zero
where the base fit holds it at its margin (short-dated SPY), local vol drops to its clip floor there and a
bucket months away from the product shows a spurious vega. What this leaves out, and says so: conditions not
active at the base are not checked for the bump (a tenth of a vol point moves ``w_T`` by about 1e-3 at most),
and the band-insensitive weights are frozen at the base fit's residuals. ``parallel_full``
checks it: the parallel vega by a full refit of the bumped quotes (``core.surface.fit.fit_surface``). Other fit
methods refit in full for every bucket (slow: about one second per bucket on a real chain).

Skew and term sensitivities (``skew_term``): central derivatives at zero of the scenario shocks
(``core.pricing.scenarios.Scenario``): ``skew`` (vol ``+ skew * y``) and ``term`` (vol ``+ term sqrt(T_ref / T)``,
``T_ref = 1`` year), each per 0.01 (one vol point; the skew per unit of ``y``).

Asians are priced by Monte Carlo (``core.pricing.exotics.price_asian``); their Greeks are bumps with common random
numbers (the same seeds in the base and bumped runs), and their standard errors come from independent batches
(``MC_BATCHES`` seeds): each batch gives one estimate of price, delta, gamma and vega, and the standard error is
the batch spread / sqrt(batches).

Sources: Dupire (1994), Gatheral (2006) ch. 1-3 (sticky strike / moneyness, the local-vol delta); Bergomi (2016)
ch. 2 (smile dynamics and the deltas they imply); Eilers & Marx (1996) for the spline fit.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.linalg as sla
import scipy.sparse as sp

from core.black import black_price, black_vega
from core.errors import InputError
from core.forwards import Forwards
from core.localvol import (
    DEFAULT_CLIP,
    GridLocalVol,
    check_clip,
    clip_local_vol,
    constant_local_vol,
    gatheral_local_variance,
    local_vol_from_surface,
)
from core.pipeline import FIT_METHOD
from core.pricing import backward
from core.pricing.exotics import price_asian
from core.pricing.products import Asian, Barrier, Digital, Vanilla
from core.pricing.saved import load_calibration
from core.pricing.scenarios import Scenario, ShockedSurface, shocked_forwards
from core.surface import tensor
from core.surface.base import Derivatives, VolSurface, butterfly_g_grad
from core.surface.fit import fit_surface
from core.surface.tensor import TensorSplineSurface

SPOT_BUMP = 0.01          # relative spot bump of the sticky deltas / gammas and the Monte Carlo deltas
VOL_BUMP = 0.01           # one vol point: vegas are per vol point
SHAPE_BUMP = 0.01         # skew and term shocks: central differences at +-0.01
N_EXPIRY = 10             # expiry buckets (contiguous groups of fitted expiries)
#: strike bucket centres in standardised moneyness ``z = y / (sigma_atm sqrt T)``: 9 buckets (hat weights)
Z_CENTRES = (-2.5, -1.75, -1.0, -0.5, 0.0, 0.5, 1.0, 1.75, 2.5)
BUCKET_BUMP = 0.001       # the vegas' finite-difference bump (a tenth of a vol point), scaled to one point
LATTICE = (201, 60)       # z x t nodes of ``lattice_local_vol``
N_SD_LATTICE = 5.0        # its z range: +-5 ATM standard deviations at each date
T_MIN_LATTICE = 1.0 / 365.0
MC_BATCHES = 8            # independent batches for Monte Carlo standard errors
MC_PATHS = 40_000         # Monte Carlo paths (over all batches) for an Asian
MC_STEPS = 100
PDE_GRID = {"n_x": 301, "n_t": 200}
PDE_PRODUCTS = (Vanilla, Barrier, Digital)


# ----------------------------------------------------------------------------------------------- pricing
def _check_product(product) -> None:
    if not isinstance(product, (Vanilla, Barrier, Digital, Asian)):
        raise InputError(f"product must be a Vanilla, Barrier, Digital or Asian (core.pricing.products), "
                         f"got {type(product).__name__}")


def _spot(forwards: Forwards) -> float:
    return float(forwards.spot) if forwards.spot is not None else float(forwards.F(0.0))


def market_vol(surface: VolSurface, forwards: Forwards, product) -> float:
    """The product's market implied vol: the fitted surface at its strike and expiry (decimal)."""
    T = float(product.T)
    y = math.log(float(product.strike) / float(forwards.F(T)))
    return float(surface.implied_vol(y, T))


def _mc_price(lv, forwards, product: Asian, iv: float, mc: dict):
    """(local-vol price, Black-Scholes price) per batch: arrays (MC_BATCHES,), the same seeds for any inputs."""
    n_b = int(mc.get("batches", MC_BATCHES))
    n = max(2, int(mc.get("n_paths", MC_PATHS)) // n_b)
    seed = int(mc.get("seed", 1))
    out = np.empty((2, n_b))
    for b in range(n_b):
        r = price_asian(lv, forwards, strike=product.strike, T=product.T, n_fixings=product.n_fixings,
                        cp=product.cp, atm_vol=iv, n_paths=n, n_steps=int(mc.get("n_steps", MC_STEPS)),
                        seed=seed + 7919 * b)
        out[:, b] = r.price_lv, r.price_bs
    return out


def price_product(lv, forwards, product, *, grid: dict | None = None, mc: dict | None = None, iv=None) -> float:
    """Price of ``product`` under local vol ``lv(K, T)``: the backward PDE (vanillas, barriers, digitals) or the
    mean of the Monte Carlo batches (Asians, ``iv`` the Black-Scholes vol carried along)."""
    if isinstance(product, Asian):
        return float(np.mean(_mc_price(lv, forwards, product, iv or 0.2, mc or {})[0]))
    return float(backward.price_pde(lv, forwards, product, **(grid or PDE_GRID)).price)


def _lv(surface, forwards, clip):
    return local_vol_from_surface(surface, forwards, clip)


# ------------------------------------------------------------------------------------------- spot Greeks
@dataclass(frozen=True)
class SpotGreeks:
    """Price and spot Greeks of one product under three dynamics (module docstring) and Black-Scholes.

    ``table``: one row per model/dynamics (``local vol``, ``sticky strike``, ``sticky moneyness``,
    ``Black-Scholes``) with ``price, delta, gamma, theta, vega`` (NaN where a dynamics does not define one;
    ``vega`` per vol point, Black-Scholes only here: the local-vol vegas are in ``VegaResult``) and, for Monte
    Carlo, standard errors ``*_se``. ``iv``: market implied vol used for Black-Scholes; ``spot``; ``bump``
    relative spot bump; ``method``; ``seconds``.
    """

    product: object
    table: pd.DataFrame
    iv: float
    spot: float
    bump: float
    method: str
    seconds: float

    def row(self, name: str) -> dict:
        """The row of ``table`` named ``name`` as a dict."""
        t = self.table.set_index("dynamics")
        return t.loc[name].to_dict()


def _bs_pde(forwards, product, iv, grid):
    """Black-Scholes price, delta, gamma, theta and vega (per vol point) by the PDE under a flat vol ``iv``."""
    base = backward.price_pde(constant_local_vol(iv), forwards, product, **grid)
    up = backward.price_pde(constant_local_vol(iv + VOL_BUMP), forwards, product, **grid).price
    dn = backward.price_pde(constant_local_vol(max(iv - VOL_BUMP, 1e-4)), forwards, product, **grid).price
    return {"price": base.price, "delta": base.delta, "gamma": base.gamma, "theta": base.theta,
            "vega": 0.5 * (up - dn)}


def _bs_closed(forwards, product: Vanilla, iv, S):
    """Black-76 price and Greeks of a European vanilla, forwards proportional to spot; theta by one-day
    difference in ``T`` along the forward curve (calendar time passing)."""
    T, K, cp = float(product.T), float(product.strike), int(product.cp)
    F, D = float(forwards.F(T)), float(forwards.D(T))
    s = iv * math.sqrt(T)
    d1 = math.log(F / K) / s + 0.5 * s
    n1 = math.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi)
    N = 0.5 * math.erfc(-cp * d1 / math.sqrt(2))
    price = float(black_price(F, K, T, iv, cp, D))
    dt = min(1.0 / 365.0, 0.5 * T)
    # a day on, spot unchanged: the contract has T - dt left, with forward F(T - dt) and discount D(T - dt)
    later = float(black_price(float(forwards.F(T - dt)), K, T - dt, iv, cp, float(forwards.D(T - dt))))
    return {"price": price, "delta": D * (F / S) * cp * N, "gamma": D * F * n1 / (S * S * s),
            "theta": (later - price) / dt, "vega": VOL_BUMP * float(black_vega(F, K, T, iv, D))}


def _sticky(surface, forwards, clip, move: float, sticky: str):
    """(surface, forwards) after a relative spot move under sticky strike or sticky moneyness."""
    fw = shocked_forwards(forwards, move)
    if sticky == "moneyness":
        return surface, fw
    return ShockedSurface(surface, Scenario(name="spot", spot_move=move, sticky="strike")), fw


def spot_greeks(surface: VolSurface, forwards: Forwards, product, *, clip=DEFAULT_CLIP, bump: float = SPOT_BUMP,
                grid: dict | None = None, mc: dict | None = None, sticky: bool = True,
                lattice: bool = True) -> SpotGreeks:
    """Price, delta, gamma, theta under local vol (the model's own dynamics), sticky-strike and sticky-moneyness
    deltas and gammas, and the Black-Scholes Greeks at the market implied vol (module docstring).

    ``surface``, ``forwards``: the calibration; ``product``: ``core.pricing.products`` spec; ``clip`` local-vol
    band; ``bump`` relative spot bump (0.01 = 1%); ``grid`` PDE sizes (``n_x``, ``n_t``); ``mc`` Monte Carlo
    settings for Asians (``n_paths``, ``n_steps``, ``seed``, ``batches``); ``sticky=False`` skips the two sticky
    rows (one PDE instead of five). Greeks per unit of spot; theta per year of calendar time.
    """
    t0 = time.perf_counter()
    _check_product(product)
    if not (0 < bump < 0.5):
        raise InputError(f"bump must be a relative spot move in (0, 0.5), e.g. 0.01; got {bump!r}")
    grid = dict(PDE_GRID, **(grid or {}))
    S = _spot(forwards)
    iv = market_vol(surface, forwards, product)
    if not (np.isfinite(iv) and iv > 0):
        raise InputError(f"the surface has no implied vol at strike {product.strike:g}, expiry {product.T:g}: "
                         "choose a strike and expiry inside the quoted range")
    nodes, a = getattr(surface, "T_nodes", ()), lattice_scale(surface, product.T)

    def make_lv(surf, fw):
        if not lattice:
            return _lv(surf, fw, clip)
        return lattice_local_vol(surf, fw, product.T, clip=clip, T_nodes=nodes, atm_vol=a)

    lv = make_lv(surface, forwards)
    rows = []
    if isinstance(product, Asian):
        rows = _asian_spot(lv, make_lv, surface, forwards, product, iv, clip, bump, mc or {}, sticky)
        method = (f"Monte Carlo ({int((mc or {}).get('n_paths', MC_PATHS)):,} paths in "
                  f"{int((mc or {}).get('batches', MC_BATCHES))} batches), bumps of {bump:.0%} with common random "
                  "numbers; standard errors from the batches")
    else:
        base = backward.price_pde(lv, forwards, product, **grid)
        rows.append({"dynamics": "local vol", "price": base.price, "delta": base.delta, "gamma": base.gamma,
                     "theta": base.theta, "vega": np.nan})
        if sticky:
            h = bump * S
            for name in ("strike", "moneyness"):
                p = {}
                for sgn in (1, -1):
                    surf, fw = _sticky(surface, forwards, clip, sgn * bump, name)
                    p[sgn] = backward.price_pde(make_lv(surf, fw), fw, product, **grid).price
                rows.append({"dynamics": f"sticky {name}", "price": base.price, "delta": (p[1] - p[-1]) / (2 * h),
                             "gamma": (p[1] - 2 * base.price + p[-1]) / (h * h), "theta": np.nan, "vega": np.nan})
        if isinstance(product, Vanilla) and not product.american:
            bs = _bs_closed(forwards, product, iv, S)
            how = "Black-Scholes: closed form"
        else:
            bs = _bs_pde(forwards, product, iv, grid)
            how = "Black-Scholes: the same PDE under a flat vol"
        rows.append({"dynamics": "Black-Scholes", **bs})
        method = f"backward PDE ({grid['n_x']} x {grid['n_t']}), local-vol Greeks from its grid; sticky Greeks by " \
                 f"+-{bump:.0%} spot bumps, local vol recomputed; {how} at the market implied vol {iv:.2%}"
    method += "; local vol read from a (z, t) lattice" if lattice else "; local vol at every node"
    return SpotGreeks(product=product, table=pd.DataFrame(rows), iv=iv, spot=S, bump=bump, method=method,
                      seconds=time.perf_counter() - t0)


def _batch_stats(values: np.ndarray) -> tuple[float, float]:
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def _asian_spot(lv, make_lv, surface, forwards, product, iv, clip, bump, mc, sticky):
    """Rows of ``SpotGreeks.table`` for an Asian: every price from the same batches of seeds (CRN)."""
    S = _spot(forwards)
    h = bump * S
    base = _mc_price(lv, forwards, product, iv, mc)
    up = _mc_price(lv, shocked_forwards(forwards, bump), product, iv, mc)
    dn = _mc_price(lv, shocked_forwards(forwards, -bump), product, iv, mc)
    rows = []
    for k, name in ((0, "local vol"), (1, "Black-Scholes")):
        d = (up[k] - dn[k]) / (2 * h)
        g = (up[k] - 2 * base[k] + dn[k]) / (h * h)
        (p, p_se), (dm, d_se), (gm, g_se) = _batch_stats(base[k]), _batch_stats(d), _batch_stats(g)
        rows.append({"dynamics": name, "price": p, "delta": dm, "gamma": gm, "theta": np.nan, "vega": np.nan,
                     "price_se": p_se, "delta_se": d_se, "gamma_se": g_se})
    if sticky:
        for name in ("strike", "moneyness"):
            pp = {}
            for sgn in (1, -1):
                surf, fw = _sticky(surface, forwards, clip, sgn * bump, name)
                pp[sgn] = _mc_price(make_lv(surf, fw), fw, product, iv, mc)[0]
            d = (pp[1] - pp[-1]) / (2 * h)
            g = (pp[1] - 2 * base[0] + pp[-1]) / (h * h)
            (dm, d_se), (gm, g_se) = _batch_stats(d), _batch_stats(g)
            rows.insert(-1, {"dynamics": f"sticky {name}", "price": rows[0]["price"], "delta": dm, "gamma": gm,
                             "theta": np.nan, "vega": np.nan, "price_se": rows[0]["price_se"], "delta_se": d_se,
                             "gamma_se": g_se})
    # Black-Scholes vega on the same batches
    up_v = _mc_price(constant_local_vol(iv + VOL_BUMP), forwards, product, iv + VOL_BUMP, mc)[0]
    dn_v = _mc_price(constant_local_vol(iv - VOL_BUMP), forwards, product, iv - VOL_BUMP, mc)[0]
    rows[-1]["vega"], rows[-1]["vega_se"] = _batch_stats(0.5 * (up_v - dn_v))
    return rows


# ------------------------------------------------------------------------------------------ linear refit
def _quote_table(fit) -> pd.DataFrame:
    """The fitted quotes of a ``SurfaceFit`` with their expiry index into ``surface.T_nodes`` (``idx``)."""
    res = fit.residuals
    if res is None or len(res) == 0:
        raise InputError("the fit has no quotes to bump: calibrate first")
    q = res.reset_index(drop=True).copy()
    key = q["expiry_key"] if "expiry_key" in q.columns else q["expiry"].astype(str)
    Tn = np.asarray(getattr(fit.surface, "T_nodes", ()), float)
    med = q.groupby(key)["T"].median()
    if len(Tn) == len(med):
        order = {k: i for i, k in enumerate(med.sort_values().index)}
    else:   # surfaces without fitted nodes: nodes from the quotes
        order = {k: i for i, k in enumerate(med.sort_values().index)}
        Tn = np.sort(med.to_numpy(float))
    q["idx"] = key.map(order).astype(int).to_numpy()
    q["T_node"] = Tn[q["idx"].to_numpy()]
    return q


@dataclass(frozen=True, eq=False)
class LinearRefit:
    """The spline fit's response to bumps of the quotes' vols with its weights frozen (module docstring).

    ``surface`` the base ``TensorSplineSurface``; ``quotes`` the fitted quotes (``T_node, y, iv_mid, idx``);
    ``replication_bp``: max |implied vol| difference (bp) between the base fit and the frozen-weight solve
    without the arbitrage QP, over the quotes (how close the frozen system is to the fit); ``n_active``: the
    arbitrage conditions the base sits on, kept by every bump (``_active_rows``); ``seconds`` to build.
    """

    surface: TensorSplineSurface
    quotes: pd.DataFrame
    replication_bp: float
    seconds: float
    _chol: np.ndarray = field(repr=False)
    _AtW: sp.csr_matrix = field(repr=False)
    n_active: int = 0
    _G: object = field(default=None, repr=False)
    _Y: object = field(default=None, repr=False)
    _S: object = field(default=None, repr=False)

    def coefficient_change(self, d_iv) -> np.ndarray:
        """``dC`` (nz+3, nu+3, m) for vol bumps ``d_iv`` (N,) or (N, m) of the quotes (decimal vol)."""
        d = np.asarray(d_iv, float)
        one = d.ndim == 1
        d = d[:, None] if one else d
        iv = self.quotes["iv_mid"].to_numpy(float)[:, None]
        dv = 2.0 * iv * d + d * d
        rhs = self._AtW @ dv
        dc = sla.cho_solve_banded((self._chol, False), rhs, check_finite=False)
        if self._G is not None and self._Y is not None:
            dc = dc - self._Y @ (self._S @ (self._G @ dc))      # project onto the frozen active set
        nzc, nuc = self.surface.grid.shape
        out = dc.T.reshape(-1, nuc, nzc).transpose(2, 1, 0)
        return out

    def bumped(self, d_iv) -> TensorSplineSurface:
        """The refitted surface after vol bumps ``d_iv`` (N,) of the quotes."""
        dC = self.coefficient_change(d_iv)[:, :, 0]
        return replace(self.surface, C=self.surface.C + dC)


def linear_refit(fit) -> LinearRefit:
    """Build the frozen-weight linear response of a 'spline' fit (``core.surface.fit.SurfaceFit`` whose surface is
    a ``TensorSplineSurface``): the data rows, penalties and weights of ``core.surface.tensor.fit_tensor`` at
    the base fit, and the banded Cholesky factor of its normal matrix. ``InputError`` for other surfaces."""
    t0 = time.perf_counter()
    surf = fit.surface
    if not isinstance(surf, TensorSplineSurface):
        raise InputError(f"the linear refit needs the 'spline' surface, got {type(surf).__name__}")
    q = _quote_table(fit)
    y, iv, T = (q[c].to_numpy(float) for c in ("y", "iv_mid", "T_node"))
    wt = q["weight"].to_numpy(float) if "weight" in q.columns else np.ones(len(q))
    rho = q["fit_weight"].to_numpy(float) if "fit_weight" in q.columns else np.ones(len(q))
    # the fit's own least-squares problem (core.surface.tensor), with its final weights frozen
    system = tensor.tensor_system(surf.grid, y, T, iv, wt, band=(q["iv_bid"].to_numpy(float), q["iv_ask"].to_numpy(float)),
                                  smoothing=getattr(fit, "smoothing", 0.0))
    chol = system.cholesky(rho)
    sw = system.scale * np.sqrt(rho)
    AtW = (system.A.multiply(sw[:, None]).T.multiply(sw[None, :])).tocsr()
    c0 = sla.cho_solve_banded((chol, False), AtW @ (iv * iv), check_finite=False)
    v0 = np.sqrt(np.maximum(system.A @ c0, 1e-12))
    iv_fit = q["iv_fit"].to_numpy(float) if "iv_fit" in q.columns else iv
    rep = float(np.max(np.abs(v0 - iv_fit)) * 1e4) if len(v0) else float("nan")
    # the arbitrage QP's active set at the base fit, frozen: calendar rows at their margin keep dw_T = 0 and
    # butterfly rows at theirs keep dg = 0 (linearised), so that a bump cannot push the surface through a
    # condition the base fit sits on (local vol would fall to its clip floor there)
    G = _active_rows(surf)
    Y = S_fac = None
    if G is not None and G.shape[0]:
        Y = sla.cho_solve_banded((chol, False), G.T.toarray(), check_finite=False)      # M^-1 G' (P, m)
        Sm = G @ Y
        S_fac = np.linalg.pinv(Sm + 1e-12 * np.trace(Sm) / len(Sm) * np.eye(len(Sm)), rcond=1e-10)
    return LinearRefit(surface=surf, quotes=q, replication_bp=rep, seconds=time.perf_counter() - t0, _chol=chol,
                       _AtW=AtW, n_active=0 if G is None else int(G.shape[0]), _G=G, _Y=Y, _S=S_fac)


def _active_rows(surf: TensorSplineSurface, tol_wT: float = 2e-4, tol_g: float = 2e-3):
    """Linear forms (m, P) of the arbitrage conditions the base surface sits on, at the fit's check points
    (``core.surface.tensor``'s grid): ``w_T`` within ``tol_wT`` of ``W_T_MARGIN`` and ``g`` within ``tol_g`` of
    ``G_MARGIN`` (the butterfly form linearised at the base, as the fit's QP does). None when none is."""
    f = tensor.condition_forms(surf.grid)
    Gw, Gwy, Gwyy, GwT, yc = f.Gw, f.Gwy, f.Gwyy, f.GwT, f.yc
    c = surf.C.T.reshape(-1)            # u-major numbering, as the fit's
    w, wy, wyy, wT = Gw @ c, Gwy @ c, Gwyy @ c, GwT @ c
    gv, g_w, g_wy, g_wyy = butterfly_g_grad(yc, np.maximum(w, 1e-12), wy, wyy)
    cal = wT <= tensor.W_T_MARGIN + tol_wT
    but = gv <= tensor.G_MARGIN + tol_g
    rows = []
    if cal.any():
        rows.append(GwT[cal])
    if but.any():
        rows.append(Gw[but].multiply(g_w[but][:, None]) + Gwy[but].multiply(g_wy[but][:, None])
                    + Gwyy[but].multiply(g_wyy))
    if not rows:
        return None
    Gm = sp.vstack(rows).tocsr()
    return Gm.multiply((1.0 / tensor.row_norms(Gm))[:, None]).tocsr()


def _full_refit(fit, forwards, d_iv) -> VolSurface:
    """The surface refitted in full (``fit_surface``, same method and smoothing) after vol bumps ``d_iv`` (N,)."""
    q = _quote_table(fit)
    d = np.asarray(d_iv, float)
    q = q.assign(iv_mid=q["iv_mid"] + d, iv_bid=q["iv_bid"] + d, iv_ask=q["iv_ask"] + d)
    q = q.drop(columns=[c for c in ("iv_fit", "resid_bp", "inside", "weight", "idx", "T_node") if c in q.columns])
    return fit_surface(q, forwards, method=fit.method, smoothing=fit.smoothing).surface


# ------------------------------------------------------------------------------------------------ vega
class LatticeLocalVol:
    """Local vol read from a table over ``(z, t)``, ``z = ln(K / F_t) / (a sqrt t)`` (``a`` an ATM vol scale):
    ``core.localvol.GridLocalVol`` (bilinear, flat beyond the table's edges) in those coordinates. The strike
    resolution follows the spread of spot at each date (a short-dated smile is narrow in strike), which a table
    rectangular in ``(K, T)`` would miss. ``table`` ``(len(t), len(z))``."""

    def __init__(self, forwards: Forwards, z: np.ndarray, t: np.ndarray, a: float, table: np.ndarray):
        self.forwards, self.z, self.t, self.a = forwards, z, t, a
        self.grid = GridLocalVol(z, t, table)

    @property
    def table(self) -> np.ndarray:
        return self.grid.table

    def __call__(self, K, T):
        # forwards and scale on the dates as given (a PDE passes a column of dates), clamped to the table's
        t = np.clip(np.asarray(T, float), self.t[0], self.t[-1])
        z = np.log(np.asarray(K, float) / np.asarray(self.forwards.F(t), float)) / (self.a * np.sqrt(t))
        return self.grid(z, t)


def lattice_scale(surface: VolSurface, T: float) -> float:
    """The ATM implied vol at ``T`` that scales ``z`` in ``lattice_local_vol``."""
    return float(np.sqrt(max(float(surface.w(0.0, float(T))) / float(T), 1e-6)))


def lattice_local_vol(surface: VolSurface, forwards: Forwards, T: float, *, clip=DEFAULT_CLIP,
                      n_z: int = LATTICE[0], n_t: int = LATTICE[1], T_nodes=None,
                      atm_vol: float | None = None) -> LatticeLocalVol:
    """Local vol of ``surface`` on a fixed lattice for one product of expiry ``T`` (``LatticeLocalVol``): the
    reprices of a vega evaluate Gatheral's formula on ``n_t`` x ``n_z`` points (about 10^4) rather than on
    every PDE node (about 6 x 10^4). ``z`` uniform over +-``N_SD_LATTICE`` standard deviations (ATM implied vol
    at ``T``) at each date; dates uniform in ``sqrt(t)`` from ``T_MIN_LATTICE`` to ``T`` plus the fitted
    expiries before ``T`` and their midpoints (a bump of one expiry moves local vol between its neighbours).
    The base and every bump share the lattice, so that its interpolation error cancels in the differences:
    pass the base surface's ``T_nodes`` and ``atm_vol`` (``lattice_scale``) when ``surface`` is a bumped one."""
    T = float(T)
    a = lattice_scale(surface, T) if atm_vol is None else float(atm_vol)
    z = np.linspace(-N_SD_LATTICE, N_SD_LATTICE, int(n_z))
    Tn = np.asarray(getattr(surface, "T_nodes", ()) if T_nodes is None else T_nodes, float)
    Tn = Tn[(Tn < T) & (Tn > T_MIN_LATTICE)]
    mids = 0.5 * (Tn[1:] + Tn[:-1]) if len(Tn) > 1 else np.array([])
    t = np.unique(np.r_[np.linspace(np.sqrt(T_MIN_LATTICE), np.sqrt(T), int(n_t)) ** 2, Tn, mids, T])
    K = np.asarray(forwards.F(t), float)[:, None] * np.exp(a * np.sqrt(t)[:, None] * z[None, :])
    table = np.asarray(local_vol_from_surface(surface, forwards, clip)(K, t[:, None]), float)
    return LatticeLocalVol(forwards, z, t, a, table)


class _SplineLattice:
    """Local vol of bumped spline surfaces on one fixed lattice, fast: the spline's ``w, w_y, w_yy, w_T`` at the
    lattice points are linear in its coefficients (``TensorSplineSurface.derivatives`` with its extrapolation,
    written as sparse linear forms once), so a bump costs four sparse products and Gatheral's formula rather than
    a spline evaluation. Checked against ``lattice_local_vol`` (tests/pricing/test_risk.py)."""

    def __init__(self, base: LatticeLocalVol, surface: TensorSplineSurface, clip):
        g = surface.grid
        t = base.t
        K = np.asarray(base.forwards.F(t), float)[:, None] * np.exp(base.a * np.sqrt(t)[:, None] * base.z[None, :])
        T1 = np.broadcast_to(t[:, None], K.shape).ravel()
        y = np.log(K.ravel() / np.asarray(base.forwards.F(T1), float))
        Tc = np.clip(T1, np.exp(g.u_lo), np.exp(g.u_hi))
        zeta, u = g.coords(y, Tc)
        zc = np.clip(zeta, g.z_lo, g.z_hi)
        dz = zeta - zc
        R0, Rz, Rzz, Ru, Rzu = g.rows(zc, u)
        v = R0 + Rz.multiply(dz[:, None])
        v_z, v_u = Rz, Ru + Rzu.multiply(dz[:, None])
        v_zz = Rzz.multiply((dz == 0)[:, None].astype(float))
        ch, th, sq = np.cosh(zeta), np.tanh(zeta), np.sqrt(Tc)
        k = T1 / Tc
        out = T1 != Tc
        col = lambda a: sp.diags(a)   # noqa: E731 - row scaling of a sparse matrix
        self.Lw = (col(Tc * k) @ v).tocsr()
        self.Lwy = (col(sq / (ch * g.c) * k) @ v_z).tocsr()
        self.Lwyy = (col(k / (ch * ch * g.c * g.c)) @ (v_zz - col(th) @ v_z)).tocsr()
        # inside the fitted expiries w_T = v - th v_z / 2 + v_u; beyond them w = (T / Tc) w(Tc) and w_T = w / T
        inside = v - col(0.5 * th) @ v_z + v_u
        self.LwT = (col(np.where(out, 0.0, 1.0)) @ inside + col(np.where(out, k * Tc / T1, 0.0)) @ v).tocsr()
        self.y, self.T1, self.shape, self.base, self.clip = y, T1, K.shape, base, check_clip(clip)

    def local_vol(self, C) -> LatticeLocalVol:
        """The lattice local vol of the spline with coefficients ``C`` (nz+3, nu+3)."""
        c = np.asarray(C, float).T.reshape(-1)
        w = np.maximum(self.Lw @ c, 1e-12 * self.T1)
        d = Derivatives(w=w, w_y=self.Lwy @ c, w_yy=self.Lwyy @ c, w_T=self.LwT @ c)
        with np.errstate(divide="ignore", invalid="ignore"):
            var, _ = gatheral_local_variance(self.y, d)
            iv = np.sqrt(w / self.T1)
        table = clip_local_vol(np.sqrt(var), iv, self.clip).reshape(self.shape)
        b = self.base
        return LatticeLocalVol(b.forwards, b.z, b.t, b.a, table)


def _bucket_weights(quotes: pd.DataFrame, surface: VolSurface, n_expiry: int, z_centres):
    """Weights (N, n_expiry' x n_z) of each quote in each bucket, summing to 1 per quote, and the bucket table.

    Expiry: the fitted expiries (``T_node``) in ``n_expiry`` contiguous groups of about equal size (each expiry
    its own bucket when there are fewer): a quote is wholly in its group. Strike: ``z = y / (sigma_atm(T) sqrt T)``
    shared between the two nearest of ``z_centres`` by linear (hat) weights, all in the outer bucket beyond the
    outer centres. A hat bump keeps the bumped smile smooth; a box bump (a step of one vol point at the bucket's
    edges) makes butterfly arbitrage, and local vol then switches to its fallback.
    """
    Tn = np.unique(quotes["T_node"].to_numpy(float))
    groups = np.array_split(np.arange(len(Tn)), min(int(n_expiry), len(Tn)))
    i_T_node = np.empty(len(Tn), int)
    for i, gr in enumerate(groups):
        i_T_node[gr] = i
    T = quotes["T_node"].to_numpy(float)
    i_T = i_T_node[np.searchsorted(Tn, T)]
    atm = np.sqrt(np.maximum(surface.w(np.zeros_like(T), T), 1e-12))
    z = quotes["y"].to_numpy(float) / atm
    zc = np.asarray(z_centres, float)
    n_z, n_T = len(zc), len(groups)
    Wz = np.stack([np.interp(z, zc, np.eye(n_z)[j]) for j in range(n_z)], axis=1)     # (N, n_z), rows sum to 1
    W = np.zeros((len(z), n_T * n_z))
    for i in range(n_T):
        m = i_T == i
        W[m, i * n_z:(i + 1) * n_z] = Wz[m]
    rows = []
    for i, gr in enumerate(groups):
        T_lo, T_hi = float(Tn[gr[0]]), float(Tn[gr[-1]])
        for j in range(n_z):
            rows.append({"i_T": i, "i_z": j, "T_lo": T_lo, "T_hi": T_hi,
                         "T": float(np.exp(0.5 * (np.log(T_lo) + np.log(T_hi)))), "z": float(zc[j]),
                         "n_quotes": float(W[:, i * n_z + j].sum())})
    return W, pd.DataFrame(rows)


@dataclass(frozen=True)
class VegaResult:
    """Parallel and bucketed vega of one product, per vol point (price units).

    ``buckets``: one row per expiry x strike bucket (``i_T, i_z, T_lo, T_hi, T, z, n_quotes`` (the bucket's
    total quote weight), ``strike`` (at ``z`` and ``T``), ``vega``); ``grid`` (n_expiry, n_strike) of the same
    vegas; ``parallel`` (every quote bumped, the same refit and bump as the buckets); ``parallel_full`` (one
    vol point on every quote, a full refit and local vol on every PDE node: the check of the fast path; None
    when not run); ``bucket_sum``, ``residual = parallel - bucket_sum``; ``base_price``; ``refit`` (how);
    ``bump`` (vol, the bump of the finite difference, scaled to one point); ``replication_bp``
    (``LinearRefit``); ``seconds`` with ``timings`` per part. Monte Carlo products carry ``parallel_se``.
    """

    product: object
    buckets: pd.DataFrame
    grid: np.ndarray
    parallel: float
    parallel_full: float | None
    bucket_sum: float
    residual: float
    base_price: float
    refit: str
    bump: float
    replication_bp: float
    seconds: float
    timings: dict = field(default_factory=dict)
    parallel_se: float | None = None

    def frame(self) -> pd.DataFrame:
        """The CSV export: ``expiry`` (years, the bucket's middle), ``strike``, ``vega`` per vol point, and the
        bucket's expiry range, standardised moneyness ``z`` and quote weight."""
        b = self.buckets
        return pd.DataFrame({"expiry": b["T"], "strike": b["strike"], "vega": b["vega"], "T_lo": b["T_lo"],
                             "T_hi": b["T_hi"], "z": b["z"], "n_quotes": b["n_quotes"]})


def vega_buckets(fit, forwards: Forwards, product, *, clip=DEFAULT_CLIP, n_expiry: int = N_EXPIRY,
                 z_centres=Z_CENTRES, bump: float = BUCKET_BUMP, grid: dict | None = None, mc: dict | None = None,
                 full_check: bool = True, bucketed: bool = True) -> VegaResult:
    """Parallel and bucketed vega of ``product`` (module docstring): bump the quotes' implied vols (all, or one
    bucket's by its weights) by ``bump``, refit (``LinearRefit`` for the spline surface, else a full refit),
    recompute local vol (``lattice_local_vol``), reprice; vega = price change scaled to one vol point (0.01).

    ``bump`` is a tenth of a point by default: a full point on one narrow bucket bends the smile enough to
    break the butterfly condition somewhere, where local vol falls back to implied vol and the difference
    measures that switch rather than a sensitivity. ``fit``: ``core.surface.fit.SurfaceFit``; ``forwards``;
    ``product`` a products spec; ``clip``; ``n_expiry``, ``z_centres`` the buckets; ``grid`` PDE sizes; ``mc``
    Monte Carlo settings (Asians: parallel vega only, ``bucketed`` ignored); ``full_check`` adds
    ``parallel_full`` (one full refit, one vol point, central difference).
    """
    t0 = time.perf_counter()
    _check_product(product)
    if not (0 < bump <= 0.05):
        raise InputError(f"bump must be in (0, 0.05] (vol, 0.01 = one point), got {bump!r}")
    grid = dict(PDE_GRID, **(grid or {}))
    surface = fit.surface
    timings = {}
    iv = market_vol(surface, forwards, product)
    spline = isinstance(surface, TensorSplineSurface)
    if spline:
        lin = linear_refit(fit)
        q, rep = lin.quotes, lin.replication_bp
        refit = (f"linear refit of the spline (robust weights and the arbitrage QP's active set of {lin.n_active} "
                 "conditions frozen)")
    else:
        lin, q, rep = None, _quote_table(fit), float("nan")
        refit = f"full refit ({fit.method}) per bump"
    timings["refit_setup"] = time.perf_counter() - t0
    W, table = _bucket_weights(q, surface, n_expiry, z_centres)
    nodes, a = getattr(surface, "T_nodes", ()), lattice_scale(surface, product.T)
    fast = None
    if spline and not isinstance(product, Asian):
        fast = _SplineLattice(lattice_local_vol(surface, forwards, product.T, clip=clip), surface, clip)
    mc = dict(mc or {})
    asian = isinstance(product, Asian)
    scale = VOL_BUMP / bump

    def price_of(surf, exact=False):
        if exact or asian:
            lv = _lv(surf, forwards, clip)
        elif fast is not None:
            lv = fast.local_vol(surf.C)
        else:
            lv = lattice_local_vol(surf, forwards, product.T, clip=clip, T_nodes=nodes, atm_vol=a)
        if asian:
            return _mc_price(lv, forwards, product, iv, mc)[0]
        return backward.price_pde(lv, forwards, product, **grid).price

    def surfaces(D):
        """Refitted surfaces for bump columns D (N, m)."""
        if lin is not None:
            dC = lin.coefficient_change(D)
            return [replace(surface, C=surface.C + dC[:, :, k]) for k in range(D.shape[1])]
        return [_full_refit(fit, forwards, D[:, k]) for k in range(D.shape[1])]

    t1 = time.perf_counter()
    base = price_of(surface)
    par = (price_of(surfaces(np.full((len(q), 1), bump))[0]) - base) * scale
    timings["parallel"] = time.perf_counter() - t1
    par_se = None
    if asian:
        par, par_se = _batch_stats(par)
        base = float(np.mean(base))
    vegas = np.full(len(table), np.nan)
    s = float("nan")
    if bucketed and not asian:
        t1 = time.perf_counter()
        live = np.flatnonzero(W.sum(axis=0) > 0)
        surfs = surfaces(W[:, live] * bump)
        timings["bucket_refits"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        vegas[:] = 0.0
        for k, b in enumerate(live):
            vegas[b] = (price_of(surfs[k]) - base) * scale
        timings["bucket_reprice"] = time.perf_counter() - t1
        s = float(vegas.sum())
    full = None
    if full_check:
        t1 = time.perf_counter()
        pf = [price_of(_full_refit(fit, forwards, np.full(len(q), sgn * VOL_BUMP)), exact=True) for sgn in (1, -1)]
        full = float(np.mean(0.5 * (pf[0] - pf[1])))
        timings["parallel_full"] = time.perf_counter() - t1
    T_b = table["T"].to_numpy(float)
    atm = np.sqrt(np.maximum(surface.w(np.zeros_like(T_b), T_b), 1e-12))
    table = table.assign(strike=np.asarray(forwards.F(T_b), float) * np.exp(table["z"].to_numpy(float) * atm),
                         vega=vegas)
    n_T = int(table["i_T"].max()) + 1
    return VegaResult(product=product, buckets=table, grid=vegas.reshape(n_T, -1), parallel=float(par),
                      parallel_full=full, bucket_sum=s, residual=float(par) - s, base_price=float(base),
                      refit=refit, bump=bump, replication_bp=rep, seconds=time.perf_counter() - t0,
                      timings=timings, parallel_se=par_se)


# -------------------------------------------------------------------------------------- skew and term
def skew_term(surface: VolSurface, forwards: Forwards, product, *, clip=DEFAULT_CLIP, eps: float = SHAPE_BUMP,
              grid: dict | None = None, mc: dict | None = None, T_ref: float = 1.0) -> dict:
    """Central derivatives at zero of the scenario shocks (``core.pricing.scenarios``), per 0.01:
    ``skew`` (vol + skew * y: price change per vol point per unit of ``y``), ``term`` (vol + term sqrt(T_ref/T):
    per vol point at ``T_ref``), ``parallel_surface`` (vol + parallel on the fitted surface, no refit: the
    surface-level parallel vega). Monte Carlo products add ``*_se``."""
    _check_product(product)
    grid = dict(PDE_GRID, **(grid or {}))
    iv = market_vol(surface, forwards, product)
    out = {}
    for name, kw in (("skew", "skew"), ("term", "term"), ("parallel_surface", "parallel")):
        p = {}
        for sgn in (1, -1):
            sc = Scenario(name=name, T_ref=T_ref, **{kw: sgn * eps})
            lv = lattice_local_vol(ShockedSurface(surface, sc), forwards, product.T, clip=clip,
                                   T_nodes=getattr(surface, "T_nodes", ()), atm_vol=lattice_scale(surface, product.T))
            if isinstance(product, Asian):
                p[sgn] = _mc_price(lv, forwards, product, iv, mc or {})[0]
            else:
                p[sgn] = backward.price_pde(lv, forwards, product, **grid).price
        d = (p[1] - p[-1]) / (2 * eps) * 0.01
        if isinstance(product, Asian):
            out[name], out[name + "_se"] = _batch_stats(d)
        else:
            out[name] = float(d)
    return out


# ----------------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class RiskReport:
    """Everything ``risk`` computes for one product: ``greeks`` (``SpotGreeks``), ``vega`` (``VegaResult``),
    ``shape`` (``skew_term``), ``convergence`` (PDE at two grid sizes, None for Monte Carlo), ``seconds``."""

    product: object
    greeks: SpotGreeks
    vega: VegaResult | None
    shape: dict
    convergence: pd.DataFrame | None
    seconds: float

    def to_dict(self) -> dict:
        """``risk.json``: price, delta, gamma, theta (local vol), vega (parallel, per vol point), dynamics (all
        rows), skew/term, method, seconds, and the product's terms."""
        lvr = self.greeks.row("local vol")
        out = {"product": self.product.to_dict(), "price": lvr["price"], "delta": lvr["delta"],
               "gamma": lvr["gamma"], "theta": lvr["theta"],
               "vega": self.vega.parallel if self.vega is not None else None,
               "vega_units": "price change per vol point (0.01)",
               "implied_vol": self.greeks.iv, "spot": self.greeks.spot,
               "dynamics": self.greeks.table.to_dict(orient="records"),
               "skew_term": self.shape, "method": self.greeks.method, "seconds": self.seconds}
        if self.vega is not None:
            v = self.vega
            out["vega_detail"] = {"parallel": v.parallel, "parallel_full_refit": v.parallel_full,
                                  "bucket_sum": v.bucket_sum, "residual": v.residual, "refit": v.refit,
                                  "replication_bp": v.replication_bp, "parallel_se": v.parallel_se,
                                  "n_buckets": int(len(v.buckets)), "seconds": v.seconds}
        if self.convergence is not None:
            out["convergence"] = self.convergence.to_dict(orient="records")
        return out


def risk_report(fit, forwards: Forwards, product, *, clip=DEFAULT_CLIP, grid: dict | None = None,
                mc: dict | None = None, n_expiry: int = N_EXPIRY, bucketed: bool = True,
                convergence_sizes=None) -> RiskReport:
    """Spot Greeks, vegas, skew/term and the PDE's convergence of ``product`` under the calibration ``fit``
    (``SurfaceFit``) and ``forwards``; see the module docstring for each part."""
    t0 = time.perf_counter()
    g = spot_greeks(fit.surface, forwards, product, clip=clip, grid=grid, mc=mc)
    v = vega_buckets(fit, forwards, product, clip=clip, grid=grid, mc=mc, n_expiry=n_expiry, bucketed=bucketed)
    shape = skew_term(fit.surface, forwards, product, clip=clip, grid=grid, mc=mc)
    conv = None
    if not isinstance(product, Asian):
        lv = _lv(fit.surface, forwards, clip)
        conv = backward.pde_convergence(lv, forwards, product, *([convergence_sizes] if convergence_sizes else []))
    return RiskReport(product=product, greeks=g, vega=v, shape=shape, convergence=conv,
                      seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------- saved folders
def load_for_risk(folder):
    """``(fit, forwards, clip, summary)`` from a folder of ``python -m core calibrate --out DIR``.

    Bucketed vega needs the quotes behind the surface, not only its local-vol grid: the surface is refitted
    from the folder's ``quotes.csv`` (the rows with ``use`` true) with the saved method and smoothing
    (``surface.json``), forwards from ``forwards.csv`` and the clip band from ``summary.json``. The local vol
    priced under is Gatheral's on that refitted surface (the pipeline's pricing local vol), not the saved grid.
    """
    d = Path(folder)
    _, forwards, summary = load_calibration(d)
    for name in ("quotes.csv", "surface.json"):
        if not (d / name).is_file():
            raise InputError(f"{d} lacks {name}: re-run `python -m core calibrate SOURCE --out {d}`")
    try:
        meta = json.loads((d / "surface.json").read_text())
        quotes = pd.read_csv(d / "quotes.csv", low_memory=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"calibration folder {d} has an unreadable file: {exc}") from None
    if "use" not in quotes.columns:
        raise InputError(f"{d / 'quotes.csv'} lacks the column 'use': re-run calibrate")
    use = quotes["use"].astype(str).str.lower().isin(("true", "1"))
    quotes = quotes[use.to_numpy()].copy()
    method = FIT_METHOD.get(str(meta.get("settings_method") or meta.get("method")), str(meta.get("method")))
    fit = fit_surface(quotes, forwards, method=method, smoothing=float(meta.get("smoothing") or 0.0))
    clip = tuple(summary.get("clip") or DEFAULT_CLIP)
    return fit, forwards, clip, summary
