"""The public API of the user's source documents (``shared/seeds/``), so their code runs unchanged.

Same names, argument orders and shapes as the seeds; different insides. The seeds price a bare
implied-vol grid with Black-Scholes and differentiate the prices numerically (finite differences or
a bicubic spline): local vol errors of tens of vol points. Here the grid first becomes a smooth,
arbitrage-aware total-variance surface (``core.surface.grid.surface_from_grid``: one global eSSVI fit of
every grid point, free of static arbitrage at every ``T``, or, for smiles it cannot follow, an SVI slice per
maturity with a monotone cubic in ``sqrt(T)`` between them; NaN holes allowed), and local vol is
Gatheral's formula on its analytic derivatives (``core.localvol``): on SSVI grids within 8 bp of the
closed form (0.15 bp median) inside 0.7-1.3 F.

- ``ImpliedVolSurface(strikes, maturities, implied_vols, S0, r=0.0, q=0.0)``: ``implied_vols`` of
  shape ``(n_maturities, n_strikes)``.
- ``DupireLocalVol(surface)``: ``.local_vol(K, T)`` (float for scalars), ``.local_vol_surface(strikes,
  maturities)`` of shape ``(n_maturities, n_strikes)``.
- ``dupire_local_vol(strikes, expiries, iv_surface, S, r=0.0, q=0.0)``: ``iv_surface`` and the result
  of shape ``(nK, nT)`` (the seed's own convention).
- ``generate_market_surface(seed=0, ...)``: a synthetic arbitrage-free market from power-law SSVI.
- ``local_vol_mc``: Monte Carlo under local vol (from ``core.pricing.mc``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import InputError
from core.localvol import DEFAULT_CLIP, LocalVolResult, local_vol_at, local_vol_grid
from core.pricing.mc import local_vol_mc
from core.surface.grid import surface_from_grid
from core.surface.ssvi import SSVISurface, ThetaParametric

__all__ = ["ImpliedVolSurface", "DupireLocalVol", "dupire_local_vol", "generate_market_surface",
           "MarketSurface", "local_vol_mc"]


def _vector(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1 or a.size == 0:
        raise InputError(f"{name} must be a non-empty 1-d array, got shape {np.shape(x)}")
    return a


class ImpliedVolSurface:
    """An implied-vol grid made into a smooth arbitrage-aware surface (the seeds' class).

    ``strikes`` ``(n_strikes,)`` increasing; ``maturities`` ``(n_maturities,)`` years, increasing;
    ``implied_vols`` ``(n_maturities, n_strikes)`` decimals, NaN for missing quotes; ``S0`` spot;
    ``r``, ``q`` continuously-compounded rate and dividend yield. Attributes: the inputs, plus
    ``surface`` (a ``VolSurface`` with analytic derivatives) and ``forwards`` (``Forwards``).
    """

    def __init__(self, strikes, maturities, implied_vols, S0, r=0.0, q=0.0):
        self.strikes = _vector("strikes", strikes)
        self.maturities = _vector("maturities", maturities)
        iv = np.asarray(implied_vols, dtype=float)
        if iv.shape != (len(self.maturities), len(self.strikes)):
            raise InputError(f"implied_vols must have shape (n_maturities, n_strikes) = "
                             f"{(len(self.maturities), len(self.strikes))}, got {iv.shape}"
                             + ("; it looks transposed" if iv.shape == (len(self.strikes), len(self.maturities)) else ""))
        self.implied_vols = iv
        self.S0, self.r, self.q = S0, r, q
        self.surface, self.forwards = surface_from_grid(self.strikes, self.maturities, iv, S0, r, q)

    def forward(self, T):
        """Forward ``S0 e^{(r-q)T}`` at ``T`` (years)."""
        return self.forwards.F(T)

    def implied_vol(self, K, T):
        """Smoothed implied vol at strikes ``K`` and maturities ``T`` (broadcast; float for scalars)."""
        K, T = np.broadcast_arrays(np.asarray(K, dtype=float), np.asarray(T, dtype=float))
        out = self.surface.implied_vol(np.log(K / self.forwards.F(T)), T)
        return float(out) if out.ndim == 0 else out

    def total_variance(self, K, T):
        """Total implied variance ``w = sigma^2 T`` at ``(K, T)`` (broadcast)."""
        K, T = np.broadcast_arrays(np.asarray(K, dtype=float), np.asarray(T, dtype=float))
        out = self.surface.w(np.log(K / self.forwards.F(T)), T)
        return float(out) if out.ndim == 0 else out


class DupireLocalVol:
    """Dupire local vol of an ``ImpliedVolSurface`` by Gatheral's formula on analytic derivatives.

    ``clip`` ``(lo, hi)``: the band applied to returned values (undefined points fall back to the
    implied vol, see ``core.localvol``); ``clip=None`` returns raw values (NaN where undefined).
    """

    def __init__(self, surface: ImpliedVolSurface, clip=DEFAULT_CLIP):
        if not hasattr(surface, "surface") or not hasattr(surface, "forwards"):
            raise InputError("DupireLocalVol(surface): surface must be an ImpliedVolSurface "
                             f"(with .surface and .forwards), got {type(surface).__name__}")
        self.iv_surface = surface
        self.clip = clip

    def local_vol(self, K, T):
        """Local vol at strike(s) ``K`` and maturity(ies) ``T`` (years); broadcasts; float for scalars."""
        K, T = np.asarray(K, dtype=float), np.asarray(T, dtype=float)
        if np.any(~np.isfinite(K) | (K <= 0)):
            raise InputError("K must be positive strikes")
        if np.any(~np.isfinite(T) | (T <= 0)):
            raise InputError("T must be positive maturities (years)")
        out = local_vol_at(self.iv_surface.surface, self.iv_surface.forwards, K, T, clip=self.clip)
        return float(out) if np.ndim(out) == 0 else out

    def result(self, strikes, maturities) -> LocalVolResult:
        """The full ``LocalVolResult`` (flags, raw and clipped) on ``maturities`` x ``strikes``."""
        return local_vol_grid(self.iv_surface.surface, self.iv_surface.forwards, strikes, maturities,
                              clip=self.clip or DEFAULT_CLIP)

    def local_vol_surface(self, strikes, maturities):
        """Local vol on the grid: array ``(n_maturities, n_strikes)``."""
        strikes = _vector("strikes", strikes)
        maturities = _vector("maturities", maturities)
        Kg, Tg = np.meshgrid(strikes, maturities)
        return np.asarray(self.local_vol(Kg, Tg)).reshape(len(maturities), len(strikes))


def dupire_local_vol(strikes, expiries, iv_surface, S, r=0.0, q=0.0):
    """Dupire local vol from an implied-vol grid, the seeds' function signature.

    ``strikes`` ``(nK,)``, ``expiries`` ``(nT,)`` years > 0, ``iv_surface`` ``(nK, nT)`` with
    ``iv_surface[i, j] = sigma(K_i, T_j)`` (NaN holes allowed), ``S`` spot, ``r``, ``q`` constants.
    Returns local vol ``(nK, nT)`` on the same grid, clipped into ``core.localvol.DEFAULT_CLIP``.
    Unlike the seed (Black prices + a bicubic spline), the grid is first fitted by a smooth surface
    and local vol is Gatheral's formula ``w_T / g`` on its analytic derivatives.
    """
    K = _vector("strikes", strikes)
    T = _vector("expiries", expiries)
    iv = np.asarray(iv_surface, dtype=float)
    if iv.shape != (len(K), len(T)):
        raise InputError(f"iv_surface must have shape (nK, nT) = {(len(K), len(T))}, got {iv.shape}"
                         + ("; it looks transposed" if iv.shape == (len(T), len(K)) else ""))
    ivs = ImpliedVolSurface(K, T, iv.T, S, r, q)
    res = local_vol_grid(ivs.surface, ivs.forwards, K, T, clip=DEFAULT_CLIP)
    return res.local_vol.T.copy()


@dataclass(frozen=True)
class MarketSurface:
    """A synthetic market: ``strikes`` ``(nK,)``, ``maturities`` ``(nT,)``, ``implied_vols``
    ``(nT, nK)``, ``spot``, ``r``, ``q``; ``model`` the true ``SSVISurface``; ``params`` as a dict.

    Unpacks as ``strikes, maturities, implied_vols, spot, r, q = generate_market_surface(...)``
    and answers ``market["implied_vols"]`` like a dict.
    """

    strikes: np.ndarray
    maturities: np.ndarray
    implied_vols: np.ndarray
    spot: float
    r: float
    q: float
    model: SSVISurface = field(repr=False)
    params: dict = field(default_factory=dict)

    _FIELDS = ("strikes", "maturities", "implied_vols", "spot", "r", "q")

    def __iter__(self):
        return iter(tuple(getattr(self, k) for k in self._FIELDS))

    def __getitem__(self, key):
        if isinstance(key, str):
            if key in ("S0", "S"):
                key = "spot"
            return getattr(self, key)
        return tuple(self)[key]

    def keys(self):
        return list(self._FIELDS) + ["model", "params"]

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.keys()}


def generate_market_surface(seed: int = 0, *, spot: float = 100.0, r: float = 0.03, q: float = 0.01,
                            strikes=None, maturities=None, rho=None, eta=None, gamma=None,
                            v0=None, v_inf=None, kappa=None, noise_bp: float = 0.0,
                            missing: float = 0.0) -> MarketSurface:
    """A realistic, arbitrage-free equity-index implied-vol grid from power-law SSVI.

    Parameters: ``seed`` (int) draws the SSVI parameters not given (uniform over realistic ranges
    inside the no-arbitrage region: ``rho`` in [-0.8, -0.4], ``gamma`` in [0.3, 0.5],
    ``eta (1 + |rho|)`` in [1.0, 1.9], ATM vol at ``T=0`` ``sqrt(v0)`` in [12%, 25%], long-run
    ``sqrt(v_inf)`` in [16%, 24%], ``kappa`` in [0.5, 3] per year); ``spot``, ``r``, ``q``
    (continuous); ``strikes`` default ``spot x (0.5, 0.525, ..., 1.5)`` (every 2.5%); ``maturities``
    default nine from 1 month to 2 years (30, 61, 91, 182, 273, 365, 456, 547, 730 days / 365);
    ``noise_bp``: i.i.d. normal noise on the vols, in basis points (0: exact, arbitrage-free);
    ``missing``: share of grid points set to NaN (holes, never a whole row).
    Free of static arbitrage for ``noise_bp = 0`` (Gatheral & Jacquier 2014, Remark 4.4).
    Returns a ``MarketSurface`` (unpacks to ``strikes, maturities, implied_vols, spot, r, q``).
    """
    rng = np.random.default_rng(int(seed))
    draws = {"rho": rng.uniform(-0.8, -0.4), "gamma": rng.uniform(0.3, 0.5), "lever": rng.uniform(1.0, 1.9),
             "v0": rng.uniform(0.12, 0.25) ** 2, "v_inf": rng.uniform(0.16, 0.24) ** 2, "kappa": rng.uniform(0.5, 3.0)}
    rho = draws["rho"] if rho is None else float(rho)
    gamma = draws["gamma"] if gamma is None else float(gamma)
    eta = draws["lever"] / (1.0 + abs(rho)) if eta is None else float(eta)
    v0 = draws["v0"] if v0 is None else float(v0)
    v_inf = draws["v_inf"] if v_inf is None else float(v_inf)
    kappa = draws["kappa"] if kappa is None else float(kappa)
    if not (np.isfinite(spot) and spot > 0):
        raise InputError(f"spot must be positive, got {spot!r}")
    K = spot * np.arange(0.5, 1.5 + 1e-9, 0.025) if strikes is None else _vector("strikes", strikes)
    T = (np.array([30, 61, 91, 182, 273, 365, 456, 547, 730]) / 365.0 if maturities is None
         else _vector("maturities", maturities))
    if np.any(T <= 0) or np.any(K <= 0):
        raise InputError("strikes and maturities must be positive")
    model = SSVISurface(rho=rho, eta=eta, gamma=gamma, theta_curve=ThetaParametric(v0=v0, v_inf=v_inf, kappa=kappa))
    F = spot * np.exp((r - q) * T)
    iv = model.implied_vol(np.log(K[None, :] / F[:, None]), T[:, None])
    if noise_bp:
        iv = iv + rng.normal(0.0, noise_bp * 1e-4, iv.shape)
    if missing:
        if not 0.0 <= missing < 1.0:
            raise InputError(f"missing must be a share in [0, 1), got {missing!r}")
        holes = rng.random(iv.shape) < missing
        holes[np.arange(len(T)), rng.integers(0, len(K), len(T))] = False   # never a whole row
        iv = np.where(holes, np.nan, iv)
    params = {"rho": rho, "eta": eta, "gamma": gamma, "v0": v0, "v_inf": v_inf, "kappa": kappa,
              "spot": float(spot), "r": float(r), "q": float(q), "seed": int(seed), "noise_bp": float(noise_bp)}
    return MarketSurface(strikes=K, maturities=T, implied_vols=iv, spot=float(spot), r=float(r), q=float(q),
                         model=model, params=params)
