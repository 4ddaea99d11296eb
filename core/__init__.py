"""Dupire Desk's calibration package: option quotes to an arbitrage-free implied-vol surface to
Dupire local vol, with pricing under it. Pure Python (numpy, scipy, pandas): no UI here.

The public API is re-exported lazily, so that importing one step does not import them all.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # quotes and sources
    "QuoteChain": "core.quotes", "make_quotes": "core.quotes",
    "demo_chain": "core.demo", "load_file": "core.sources.detect", "export_chain": "core.sources.detect",
    "YahooSource": "core.sources.yahoo", "SnapshotStore": "core.sources.snapshots",
    # cleaning and forwards
    "CleaningConfig": "core.cleaning", "clean_quotes": "core.cleaning", "implied_forwards": "core.forwards",
    "Forwards": "core.forwards",
    # Black-76
    "black_price": "core.black", "black_vega": "core.black", "implied_vol": "core.black",
    "quote_implied_vols": "core.black", "IV_REASONS": "core.black", "backend": "core.black",
    # surfaces
    "SSVISurface": "core.surface.ssvi", "ThetaParametric": "core.surface.ssvi",
    "fit_surface": "core.surface.fit", "SurfaceFit": "core.surface.fit", "VolSurface": "core.surface.base",
    # local vol and the seeds' API
    "local_vol_grid": "core.localvol", "LocalVolResult": "core.localvol",
    "surface_from_grid": "core.surface.grid",
    "quote_arbitrage": "core.arbitrage", "surface_arbitrage": "core.arbitrage",
    "ImpliedVolSurface": "core.seeds", "DupireLocalVol": "core.seeds",
    "dupire_local_vol": "core.seeds", "generate_market_surface": "core.seeds",
    "local_vol_mc": "core.seeds",
    # pricing
    "forward_dupire": "core.pricing.pde", "reprice": "core.pricing.pde", "mc_european": "core.pricing.mc",
    "price_barrier": "core.pricing.exotics", "price_asian": "core.pricing.exotics",
    "run_scenarios": "core.pricing.scenarios", "Scenario": "core.pricing.scenarios",
    # pipeline
    "Settings": "core.pipeline", "calibrate": "core.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
