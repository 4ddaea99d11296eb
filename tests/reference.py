"""Test-side references (oracles): closed forms written out from MATH.md and the papers.

Each function here is a slow, plain transcription of one formula, kept only to check the fast code
against (as py_vollib keeps its reference beside its fast code). Nothing here imports the code it
checks: no ``core.localvol``, no ``core.surface`` functions, no ``core.arbitrage``. Models are read
as plain parameters (an ``SSVISurface`` is only asked for its fields).
"""
from __future__ import annotations

import numpy as np


def _ssvi_params(surface) -> tuple[float, float, float, float, float, float]:
    """``(rho, eta, gamma, v0, v_inf, kappa)`` of a power-law SSVI over a ``ThetaParametric`` curve."""
    curve = surface.theta_curve
    try:
        return (float(surface.rho), float(surface.eta), float(surface.gamma),
                float(curve.v0), float(curve.v_inf), float(curve.kappa))
    except AttributeError:
        raise TypeError("the SSVI reference needs a power-law SSVI over a ThetaParametric curve "
                        f"(v0, v_inf, kappa), got a {type(curve).__name__} curve") from None


def ssvi_local_vol_reference(surface, y, T):
    """Closed-form Dupire local vol of a power-law SSVI surface (the tests' ground truth).

    ``surface``: an SSVI with fields ``rho, eta, gamma`` and ``theta_curve`` with ``v0, v_inf, kappa``;
    ``y = ln(K/F_T)`` and ``T`` (years) broadcast. Returns ``sigma_loc`` (same shape), NaN where local
    variance is undefined (``g <= 0`` or ``w_T < 0``).

    Notes
    -----
    ATM variance ``theta(T) = v_inf T + (v0 - v_inf)(1 - e^{-kappa T})/kappa``,
    ``theta'(T) = v_inf + (v0 - v_inf) e^{-kappa T}``; power law
    ``phi = eta theta^-gamma (1 + theta)^(gamma - 1)``, ``phi' = phi (-gamma/theta + (gamma - 1)/(1 + theta))``
    (Gatheral & Jacquier 2014, eqs. 4.1, 4.5). With ``R = sqrt((phi y + rho)^2 + 1 - rho^2)``::

        w      = theta/2 (1 + rho phi y + R)
        w_y    = theta phi/2 (rho + (phi y + rho)/R)
        w_yy   = theta phi^2 (1 - rho^2) / (2 R^3)
        dw/dtheta = (1 + rho phi y + R)/2 + theta/2 (rho y + (phi y + rho) y / R) phi'
        w_T    = dw/dtheta theta'(T)

    and Gatheral's formula (2006, eq. 1.10; MATH.md "Dupire") in MATH.md's expanded form::

        g = 1 - (y/w) w_y + 1/4 (-1/4 - 1/w + y^2/w^2) w_y^2 + 1/2 w_yy,   sigma_loc^2 = w_T / g
    """
    rho, eta, gamma, v0, v_inf, kappa = _ssvi_params(surface)
    y, T = np.broadcast_arrays(np.asarray(y, dtype=float), np.asarray(T, dtype=float))
    theta = v_inf * T + (v0 - v_inf) * (1.0 - np.exp(-kappa * T)) / kappa
    theta_T = v_inf + (v0 - v_inf) * np.exp(-kappa * T)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        phi = eta * theta ** (-gamma) * (1.0 + theta) ** (gamma - 1.0)
        phi_theta = phi * (-gamma / theta + (gamma - 1.0) / (1.0 + theta))
        u = phi * y + rho
        R = np.sqrt(u * u + 1.0 - rho * rho)
        half_bracket = 0.5 * (1.0 + rho * phi * y + R)
        w = theta * half_bracket
        w_y = 0.5 * theta * phi * (rho + u / R)
        w_yy = 0.5 * theta * phi * phi * (1.0 - rho * rho) / R**3
        w_T = (half_bracket + 0.5 * theta * (rho * y + u * y / R) * phi_theta) * theta_T
        g = (1.0 - (y / w) * w_y + 0.25 * (-0.25 - 1.0 / w + y * y / (w * w)) * w_y * w_y + 0.5 * w_yy)
        local_var = np.where((g > 0) & (w_T >= 0), w_T / g, np.nan)
    return np.sqrt(local_var)
