"""SSVI: the surface SVI of Gatheral & Jacquier (2014), in closed form with its derivatives.

``w(y, T) = theta/2 (1 + rho phi y + sqrt((phi y + rho)^2 + 1 - rho^2))``, ``theta = theta(T)`` the
ATM total variance, power-law ``phi(theta) = eta / (theta^gamma (1 + theta)^(1 - gamma))``
(Gatheral & Jacquier 2014, eqs. 4.1 and 4.5). Free of static arbitrage when ``theta`` is
non-decreasing, ``0 < gamma <= 1/2`` and ``eta (1 + |rho|) <= 2`` (their Remark 4.4 / MATH.md).
This module is the analytic model; fitting it to quotes lives in ``core.surface.ssvi_fit``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import InputError
from core.surface.base import Derivatives, VolSurface


@dataclass(frozen=True)
class ThetaParametric:
    """ATM total variance ``theta(T) = v_inf T + (v0 - v_inf)(1 - exp(-kappa T))/kappa``.

    ``v0``: instantaneous ATM variance (vol^2 at T=0), ``v_inf``: long-run variance, ``kappa`` > 0:
    speed (per year). ``dtheta/dT = v_inf + (v0 - v_inf) exp(-kappa T) > 0``: calendar-free.
    """

    v0: float
    v_inf: float
    kappa: float

    def __post_init__(self) -> None:
        for name in ("v0", "v_inf", "kappa"):
            val = getattr(self, name)
            if not (np.isfinite(val) and val > 0):
                raise InputError(f"ThetaParametric.{name} must be positive and finite, got {val!r}")

    def theta(self, T):
        """ATM total variance at ``T`` (years)."""
        T = np.asarray(T, dtype=float)
        return self.v_inf * T + (self.v0 - self.v_inf) * (-np.expm1(-self.kappa * T)) / self.kappa

    def dtheta(self, T):
        """``d theta / dT`` at ``T``."""
        T = np.asarray(T, dtype=float)
        return self.v_inf + (self.v0 - self.v_inf) * np.exp(-self.kappa * T)


def power_law_phi(theta, eta: float, gamma: float):
    """``phi(theta) = eta / (theta^gamma (1 + theta)^(1 - gamma))`` and ``dphi/dtheta``."""
    theta = np.asarray(theta, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = eta / (theta**gamma * (1.0 + theta) ** (1.0 - gamma))
        dphi = phi * (-gamma / theta - (1.0 - gamma) / (1.0 + theta))
    return phi, dphi


def ssvi_slice(y, theta, rho: float, phi):
    """SSVI slice and its ``y``-derivatives at fixed ``theta``: returns ``(w, w_y, w_yy)``.

    With ``z = phi y + rho`` and ``R = sqrt(z^2 + 1 - rho^2)``: ``w = theta/2 (1 + rho phi y + R)``,
    ``w_y = theta phi/2 (rho + z/R)``, ``w_yy = theta phi^2 (1 - rho^2) / (2 R^3)``.
    """
    y = np.asarray(y, dtype=float)
    theta = np.asarray(theta, dtype=float)
    phi = np.asarray(phi, dtype=float)
    z = phi * y + rho
    R = np.sqrt(z * z + 1.0 - rho * rho)
    w = 0.5 * theta * (1.0 + rho * phi * y + R)
    w_y = 0.5 * theta * phi * (rho + z / R)
    w_yy = 0.5 * theta * phi * phi * (1.0 - rho * rho) / R**3
    return w, w_y, w_yy


@dataclass(frozen=True)
class SSVISurface(VolSurface):
    """Power-law SSVI surface over a theta curve (any object with ``theta(T)`` and ``dtheta(T)``).

    ``rho`` in (-1, 1), ``eta`` > 0, ``gamma`` in (0, 1). ``derivatives`` is exact (closed form).
    """

    rho: float
    eta: float
    gamma: float
    theta_curve: object
    T_quoted: tuple[float, float] = (0.0, np.inf)

    def __post_init__(self) -> None:
        if not (-1.0 < self.rho < 1.0):
            raise InputError(f"SSVI rho must be inside (-1, 1), got {self.rho!r}")
        if not (self.eta > 0 and np.isfinite(self.eta)):
            raise InputError(f"SSVI eta must be positive, got {self.eta!r}")
        if not (0.0 < self.gamma < 1.0):
            raise InputError(f"SSVI gamma must be inside (0, 1), got {self.gamma!r}")

    def phi(self, theta):
        """Power-law ``phi(theta)``."""
        return power_law_phi(theta, self.eta, self.gamma)[0]

    def derivatives(self, y, T) -> Derivatives:
        """Closed-form ``w, w_y, w_yy, w_T`` (``w_T = dw/dtheta * dtheta/dT`` at fixed ``y``)."""
        y = np.asarray(y, dtype=float)
        T = np.asarray(T, dtype=float)
        y, T = np.broadcast_arrays(y, T)
        theta = self.theta_curve.theta(T)
        dtheta = self.theta_curve.dtheta(T)
        phi, dphi = power_law_phi(theta, self.eta, self.gamma)
        w, w_y, w_yy = ssvi_slice(y, theta, self.rho, phi)
        z = phi * y + self.rho
        R = np.sqrt(z * z + 1.0 - self.rho**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            dw_dtheta = np.where(theta > 0, w / theta, 1.0) + 0.5 * theta * dphi * y * (self.rho + z / R)
        return Derivatives(w=w, w_y=w_y, w_yy=w_yy, w_T=dw_dtheta * dtheta)

    def no_arbitrage_conditions(self) -> dict[str, bool]:
        """Sufficient conditions of Gatheral & Jacquier (2014) for the power law (Remark 4.4)."""
        return {
            "gamma_in_(0,1/2]": 0.0 < self.gamma <= 0.5,
            "eta(1+|rho|)<=2": self.eta * (1.0 + abs(self.rho)) <= 2.0 + 1e-12,
        }
