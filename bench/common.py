"""Shared helpers for benchmark modules: a best-of-n timer, ratios, rows and the markdown table.

A benchmark module builds its rows with :func:`row` (which checks the keys) and computes the ratio
with :func:`ratio` so that every module states "how many times better we are" the same way.
"""
from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

#: keys of one table row, in column order
ROW_KEYS = ("benchmark", "metric", "ours", "peer", "peer_value", "ratio", "notes")
HEADERS = ("benchmark", "metric", "ours", "peer", "peer value", "ratio (x better)", "notes")
NO_PEER = "—"


def best_of(fn: Callable[[], Any], *, repeat: int = 3, number: int = 1) -> tuple[float, Any]:
    """Best (minimum) wall time in seconds of ``number`` calls of ``fn``, over ``repeat`` rounds.

    Returns ``(seconds_per_call, last_result)``. The minimum is the least noisy estimate of the cost
    on a shared machine (timeit's advice): noise only ever adds time.
    """
    best = math.inf
    result = None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        for _ in range(max(1, number)):
            result = fn()
        best = min(best, (time.perf_counter() - t0) / max(1, number))
    return best, result


def throughput(n_items: int, seconds: float, unit: float = 1e6) -> float:
    """Items per second in units of ``unit`` (default millions): ``n_items / seconds / unit``."""
    return n_items / seconds / unit if seconds > 0 else math.inf


def ratio(ours: float, peer: float, *, higher_is_better: bool = True) -> float:
    """How many times better we are than the peer (>1: ours better); NaN when undefined.

    ``higher_is_better`` for throughputs; ``False`` for times and errors. A zero error of ours
    against a positive error of the peer gives ``inf``.
    """
    try:
        ours, peer = float(ours), float(peer)
    except (TypeError, ValueError):
        return math.nan
    if math.isnan(ours) or math.isnan(peer):
        return math.nan
    num, den = (ours, peer) if higher_is_better else (peer, ours)
    if den == 0:
        return math.inf if num > 0 else math.nan
    return num / den


def row(benchmark: str, metric: str, ours: float, peer: str = NO_PEER, peer_value: float = math.nan,
        ratio: float = math.nan, notes: str = "") -> dict:
    """One table row as a dict with exactly the keys of ``ROW_KEYS``."""
    return {"benchmark": benchmark, "metric": metric, "ours": ours, "peer": peer,
            "peer_value": peer_value, "ratio": ratio, "notes": notes}


def fmt_num(x: Any) -> str:
    """Compact number formatting for the table: 3 significant digits, scientific when tiny/huge."""
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "—"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    a = abs(v)
    if 1e-3 <= a < 1e5:
        return f"{v:.3g}"
    return f"{v:.2e}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_table(rows: Iterable[dict]) -> str:
    """The rows as one markdown table (columns ``HEADERS``); missing keys show empty."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    for r in rows:
        cells = []
        for key in ROW_KEYS:
            v = r.get(key, "")
            if key == "ratio" and isinstance(v, (int, float)) and math.isfinite(v):
                cells.append(f"{fmt_num(v)}x")
            else:
                cells.append(fmt_num(v) if key in ("ours", "peer_value", "ratio") else _cell(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_info() -> dict:
    """Date (UTC), CPU count, platform and versions of Python and numpy, for the results header."""
    import numpy as np

    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_name(),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        info["load"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        pass
    try:
        import scipy

        info["scipy"] = scipy.__version__
    except ImportError:  # pragma: no cover - scipy is a runtime dependency
        pass
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
