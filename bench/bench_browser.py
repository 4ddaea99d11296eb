"""The dashboard in a real browser on a real SPX chain: seconds from an input to the new chart on screen.

Measured by the browser test (``tests/e2e/test_browser.py::test_real_spx_chain``, Playwright driving Debian's
Chromium against ``streamlit run``, 1600 x 1000), which writes ``test-artifacts/browser_timings.json``; this
module reports its latest run next to the issue's targets. No peer: the targets are the comparison.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from bench.common import row

TIMINGS = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser_timings.json"
#: what each timing is, and the target of the dashboard issue (seconds)
ROWS = {
    "surfaces_warm_s": ("Surfaces page, warm", 2.0), "smiles_warm_s": ("Smiles page, warm", 2.0),
    "arbitrage_warm_s": ("Arbitrage page, warm", 2.0), "validation_warm_s": ("Validation page, warm", 2.0),
    "data_warm_s": ("Data page, warm", 2.0), "clip_change_s": ("clip band change on screen", 1.0),
    "smoothing_change_s": ("smoothing change on screen", 2.0),
    "back_to_computed_setting_s": ("back to a computed setting", 1.0),
    "surfaces_3d_implied_s": ("3D implied-vol view switched on", math.nan),
    "upload_to_home_s": ("upload of the file to its first page", math.nan),
}


def run(quick: bool = False) -> list[dict]:
    """One row per timing of the latest browser run (or one row saying there is none)."""
    try:
        data = json.loads(TIMINGS.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [row("browser on a real SPX chain", "skipped", math.nan,
                    notes=f"no {TIMINGS.name}: run `make test` (its browser test writes it)")]
    rows = []
    for chain, rec in data.items():
        t = rec.get("timings_s", {})
        for key, (what, target) in ROWS.items():
            if key in t:
                note = f"{rec.get('chain', chain)}, measured {rec.get('measured', '?')} by the browser test"
                if math.isfinite(target):
                    note += f"; target {target:g} s ({'met' if t[key] <= target else 'missed'})"
                rows.append(row(f"browser: {what}", "seconds", float(t[key]), notes=note))
    return rows
