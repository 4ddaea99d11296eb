"""Contract terms of the products the desk prices: small frozen dataclasses, validated once.

``Vanilla``, ``Barrier`` and ``Digital`` are priced by the backward local-vol PDE
(``core.pricing.backward.price_pde``); ``Asian`` by Monte Carlo (``core.pricing.exotics.price_asian``).
Units: strikes and barriers in price units, ``T`` in years, ``cp`` +1 call / -1 put.

Rebate convention of ``Barrier`` (one place): a knock-out pays ``rebate`` at the moment the barrier is
hit (undiscounted cash at the hitting time); a knock-in pays ``rebate`` at expiry ``T`` if the barrier
was never hit. Barriers are monitored continuously.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from core.errors import InputError

#: the four single barriers (knock-in = vanilla - knock-out)
BARRIER_KINDS = ("up-and-out", "up-and-in", "down-and-out", "down-and-in")

#: barrier monitoring styles the PDE understands
MONITORING = ("continuous",)


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive(name: str, value) -> None:
    if not (_real(value) and math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a positive finite number, got {value!r}: pass it in price units "
                         "(strike, barrier) or years (T)")


def _cp(value) -> None:
    if value not in (1, -1):
        raise InputError(f"cp must be +1 (call) or -1 (put), got {value!r}")


def _kind(cp: int) -> str:
    return "call" if cp > 0 else "put"


@dataclass(frozen=True)
class Vanilla:
    """European (or American, ``american=True``) call/put: payoff ``(cp (S_T - strike))^+``."""

    strike: float
    T: float
    cp: int = 1
    american: bool = False

    def __post_init__(self) -> None:
        _positive("strike", self.strike)
        _positive("T", self.T)
        _cp(self.cp)
        if not isinstance(self.american, bool):
            raise InputError(f"american must be True or False, got {self.american!r}")

    @property
    def label(self) -> str:
        """Short human text, e.g. ``American put K=100 T=0.5``."""
        style = "American" if self.american else "European"
        return f"{style} {_kind(self.cp)} K={self.strike:g} T={self.T:g}"

    def to_dict(self) -> dict:
        """Flat JSON-able terms with ``type``."""
        return {"type": "vanilla", **asdict(self)}


@dataclass(frozen=True)
class Barrier:
    """Single barrier call/put, continuously monitored; ``kind`` in ``BARRIER_KINDS``.

    Payoff ``(cp (S_T - strike))^+`` if knocked in / not knocked out; ``rebate`` paid at the hit for
    knock-outs, at expiry if never hit for knock-ins (module docstring).
    """

    strike: float
    T: float
    barrier: float
    kind: str = "up-and-out"
    cp: int = 1
    rebate: float = 0.0
    monitoring: str = "continuous"

    def __post_init__(self) -> None:
        _positive("strike", self.strike)
        _positive("T", self.T)
        _positive("barrier", self.barrier)
        _cp(self.cp)
        if self.kind not in BARRIER_KINDS:
            raise InputError(f"kind must be one of {BARRIER_KINDS}, got {self.kind!r}")
        if not (_real(self.rebate) and math.isfinite(self.rebate) and self.rebate >= 0):
            raise InputError(f"rebate must be a finite number >= 0 (cash), got {self.rebate!r}")
        if self.monitoring not in MONITORING:
            raise InputError(f"monitoring must be one of {MONITORING} for the PDE, got {self.monitoring!r}; "
                             "price discrete monitoring with core.pricing.exotics.price_barrier")

    @property
    def up(self) -> bool:
        """True for an upper barrier."""
        return self.kind.startswith("up")

    @property
    def knock_out(self) -> bool:
        """True for a knock-out."""
        return self.kind.endswith("out")

    @property
    def label(self) -> str:
        """Short human text, e.g. ``up-and-out call K=100 H=120 T=1``."""
        reb = f" R={self.rebate:g}" if self.rebate else ""
        return f"{self.kind} {_kind(self.cp)} K={self.strike:g} H={self.barrier:g} T={self.T:g}{reb}"

    def to_dict(self) -> dict:
        """Flat JSON-able terms with ``type``."""
        return {"type": "barrier", **asdict(self)}


@dataclass(frozen=True)
class Digital:
    """Cash-or-nothing digital paying 1 at ``T`` if ``cp (S_T - strike) > 0``."""

    strike: float
    T: float
    cp: int = 1

    def __post_init__(self) -> None:
        _positive("strike", self.strike)
        _positive("T", self.T)
        _cp(self.cp)

    @property
    def label(self) -> str:
        """Short human text, e.g. ``digital call K=100 T=1``."""
        return f"digital {_kind(self.cp)} K={self.strike:g} T={self.T:g}"

    def to_dict(self) -> dict:
        """Flat JSON-able terms with ``type``."""
        return {"type": "digital", **asdict(self)}


@dataclass(frozen=True)
class Asian:
    """Arithmetic-average Asian ``(cp (A - strike))^+`` over ``n_fixings`` equally spaced dates ending at ``T``
    (priced by Monte Carlo, ``core.pricing.exotics.price_asian``)."""

    strike: float
    T: float
    n_fixings: int = 12
    cp: int = 1

    def __post_init__(self) -> None:
        _positive("strike", self.strike)
        _positive("T", self.T)
        _cp(self.cp)
        if not (isinstance(self.n_fixings, numbers.Integral) and not isinstance(self.n_fixings, bool)
                and self.n_fixings >= 1):
            raise InputError(f"n_fixings must be an integer >= 1, got {self.n_fixings!r}")

    @property
    def label(self) -> str:
        """Short human text, e.g. ``Asian call K=100 T=1 (12 fixings)``."""
        return f"Asian {_kind(self.cp)} K={self.strike:g} T={self.T:g} ({self.n_fixings} fixings)"

    def to_dict(self) -> dict:
        """Flat JSON-able terms with ``type``."""
        return {"type": "asian", **asdict(self)}
