"""Test-side reference (oracle) of ``core.forwards.implied_forwards``: the original per-expiry algorithm.

A slow, plain copy of the parity estimation as it stood before it was vectorised (issue 11, point 4):
one pandas merge of calls and puts per expiry series, Theil-Sen then Huber IRLS in numpy per expiry,
the same fallbacks. It imports nothing from ``core.forwards`` (the interpolation of ``Forwards`` is
written out here) so that the fast code is checked against an independent copy, not against itself.

Input: a quote table already cleaned (``reason``, ``mid``, ``spread`` columns) and a
``CleaningConfig`` (only ``parity_width``, ``parity_min_pairs`` and ``max_abs_rate`` are read).
Output: the forwards table (a DataFrame, sorted by ``T``) that ``implied_forwards`` returned.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

_HUBER_C = 1.345


def _wmedian(x, w):
    o = np.argsort(x)
    cw = np.cumsum(w[o])
    return float(x[o][np.searchsorted(cw, 0.5 * cw[-1])])


def _theil_sen(x, z):
    if len(x) > 300:
        keep = np.linspace(0, len(x) - 1, 300).round().astype(int)
        x, z = x[keep], z[keep]
    i, j = np.triu_indices(len(x), k=1)
    dx = x[j] - x[i]
    keep = dx != 0
    b = float(np.median((z[j] - z[i])[keep] / dx[keep])) if keep.any() else 0.0
    return float(np.median(z - b * x)), b


def _huber_line(x, z, s, iters=50):
    a, b = _theil_sen(x, z)
    w0 = 1.0 / s**2
    for _ in range(iters):
        r = (z - a - b * x) / s
        scale = 1.4826 * float(np.median(np.abs(r)))
        if not np.isfinite(scale) or scale <= 1e-12:
            hw = np.ones_like(r)
        else:
            u = np.abs(r) / scale
            hw = np.where(u <= _HUBER_C, 1.0, _HUBER_C / np.maximum(u, 1e-300))
        W = w0 * hw
        sw, swx, swxx = W.sum(), (W * x).sum(), (W * x * x).sum()
        swz, swxz = (W * z).sum(), (W * x * z).sum()
        det = sw * swxx - swx * swx
        if not np.isfinite(det) or det <= 1e-300 * max(sw * swxx, 1e-300):
            break
        a_new = (swxx * swz - swx * swxz) / det
        b_new = (sw * swxz - swx * swz) / det
        done = abs(a_new - a) <= 1e-12 * (1 + abs(a)) and abs(b_new - b) <= 1e-12 * (1 + abs(b))
        a, b = float(a_new), float(b_new)
        if done:
            break
    return a, b, z - a - b * x


def _first_guess(K, z, D=1.0):
    o = np.argsort(np.abs(z))[:3]
    return float(np.median(K[o] + z[o] / D))


def _near(K, F0, T, cfg, at_least):
    dist = np.abs(np.log(K / F0))
    band = max(0.02, cfg.parity_width * np.sqrt(max(T, 0.0)))
    idx = np.flatnonzero(dist <= band)
    if len(idx) < at_least:
        idx = np.argsort(dist)[:at_least]
    return np.sort(idx)


def _parity_regression(K, z, s, T, cfg):
    if len(K) < cfg.parity_min_pairs:
        return None
    F0 = _first_guess(K, z)
    if not (np.isfinite(F0) and F0 > 0):
        F0 = float(np.median(K))
    F = F0
    for _ in range(2):
        idx = _near(K, F, T, cfg, cfg.parity_min_pairs)
        x = K[idx] - F
        a, b, res = _huber_line(x, z[idx], s[idx])
        D = -b
        if not (np.isfinite(D) and D > 0):
            return None
        F_new = F + a / D
        if not (np.isfinite(F_new) and F_new > 0):
            return None
        F = F_new
    used = K[idx]
    if not (0.0 < D <= 1.5 and abs(np.log(D)) <= cfg.max_abs_rate * T + 1e-3
            and 0.5 * used.min() <= F <= 2.0 * used.max()):
        return None
    return F, D, len(idx), 1.4826 * float(np.median(np.abs(res)))


def _parity_forward(K, z, s, T, D, cfg):
    if len(K) == 0:
        return None
    F0 = _first_guess(K, z, D)
    if not (np.isfinite(F0) and F0 > 0):
        return None
    idx = _near(K, F0, T, cfg, min(len(K), cfg.parity_min_pairs))
    est = K[idx] + z[idx] / D
    F = _wmedian(est, 1.0 / s[idx])
    if not (np.isfinite(F) and F > 0 and 0.5 * K[idx].min() <= F <= 2.0 * K[idx].max()):
        return None
    return F, len(idx), 1.4826 * float(np.median(np.abs(D * (est - F))))


def pairs_by_expiry(q):
    """Per expiry series: ``{key, expiry, T, K, z = C - P, s, expiry_time}`` (one pandas merge each)."""
    keys = ["expiry", "expiry_time"] if "expiry_time" in q.columns else ["expiry"]
    T_all = pd.to_numeric(q["T"], errors="coerce")
    ok = q["reason"].astype(str).eq("ok").to_numpy()
    mid = pd.to_numeric(q["mid"], errors="coerce")
    spread = pd.to_numeric(q["spread"], errors="coerce")
    out = []
    for key, g in q.groupby(keys, sort=True, dropna=True):
        T = float(np.nanmedian(T_all.loc[g.index])) if T_all.loc[g.index].notna().any() else np.nan
        if not (np.isfinite(T) and T > 0):
            continue
        gi = g.index[ok[g.index]]
        cp = pd.to_numeric(g.loc[gi, "cp"], errors="coerce")
        K = pd.to_numeric(g.loc[gi, "strike"], errors="coerce")
        calls = pd.DataFrame({"K": K[cp == 1], "m": mid.loc[gi][cp == 1], "s": spread.loc[gi][cp == 1]})
        puts = pd.DataFrame({"K": K[cp == -1], "m": mid.loc[gi][cp == -1], "s": spread.loc[gi][cp == -1]})
        calls = calls.drop_duplicates("K")
        puts = puts.drop_duplicates("K")
        pr = calls.merge(puts, on="K", suffixes=("_c", "_p")).sort_values("K")
        Kv = pr["K"].to_numpy(float)
        zv = (pr["m_c"] - pr["m_p"]).to_numpy(float)
        sv = 0.5 * (pr["s_c"] + pr["s_p"]).to_numpy(float)
        good = np.isfinite(Kv) & (Kv > 0) & np.isfinite(zv) & np.isfinite(sv)
        Kv, zv, sv = Kv[good], zv[good], sv[good]
        if len(sv):
            sv = np.maximum(sv, max(1e-3 * float(np.median(sv)), 1e-8 * float(np.median(Kv))))
        expiry = key[0] if isinstance(key, tuple) else key
        out.append({"key": key, "expiry": expiry, "T": T, "K": Kv, "z": zv, "s": sv,
                    "expiry_time": key[1] if isinstance(key, tuple) and len(key) > 1 else pd.NaT})
    return out


def _loglinear(T, Tn, v):
    """``ln F`` or ``ln D`` nodes ``(Tn, v)`` interpolated linearly, flat log-slope beyond the ends."""
    o = np.argsort(Tn, kind="stable")
    Tn, v = Tn[o], v[o]
    if len(Tn) == 1:
        return float(np.exp(v[0]))
    out = np.interp(T, Tn, v)
    if T < Tn[0]:
        out = v[0] + (v[1] - v[0]) / (Tn[1] - Tn[0]) * (T - Tn[0])
    elif T > Tn[-1]:
        out = v[-1] + (v[-1] - v[-2]) / (Tn[-1] - Tn[-2]) * (T - Tn[-1])
    return float(np.exp(out))


def _interp(col, T, have, anchor):
    pts = {}
    for h in have:
        if np.isfinite(h[col]) and h["T"] not in pts:
            pts[h["T"]] = h[col]
    if not pts:
        return None
    Tn = np.array(list(pts), float)
    v = np.log(np.array(list(pts.values()), float))
    if col == "F" and anchor is not None:
        Tn, v = np.r_[0.0, Tn], np.r_[np.log(anchor), v]
    elif col == "D":
        Tn, v = np.r_[0.0, Tn], np.r_[0.0, v]
    return _loglinear(T, Tn, v)


def reference_forwards(q, cfg, *, spot=None, r=None, qy=None, exercise="european"):
    """The forwards table of the original algorithm (see the module docstring); ``qy`` is the dividend yield."""
    S, r_, q_ = spot, r, qy
    groups = pairs_by_expiry(q.reset_index(drop=True))
    rows = []
    for g in groups:
        row = {"expiry": g["expiry"], "expiry_time": g["expiry_time"], "T": g["T"], "F": np.nan, "D": np.nan,
               "n_pairs": 0, "residual": np.nan, "fallback": None}
        if r_ is None:
            fit = _parity_regression(g["K"], g["z"], g["s"], g["T"], cfg)
            if fit is not None:
                row.update(F=fit[0], D=fit[1], n_pairs=fit[2], residual=fit[3], fallback="")
        rows.append(row)
    fitted = [w for w in rows if w["fallback"] == ""]
    for w, g in zip(rows, groups, strict=True):
        if w["fallback"] == "":
            continue
        if r_ is not None:
            w["D"], how = float(np.exp(-r_ * g["T"])), "discount from r"
        else:
            D_i = _interp("D", g["T"], fitted, None)
            w["D"], how = (D_i, "interpolated discount") if D_i is not None else (1.0, "discount assumed 1")
        pf = _parity_forward(g["K"], g["z"], g["s"], g["T"], w["D"], cfg)
        if pf is not None:
            w.update(F=pf[0], n_pairs=pf[1], residual=pf[2], fallback=how)
    if q_ is not None:
        for w, g in zip(rows, groups, strict=True):
            if not np.isfinite(w["D"]):
                D_i = _interp("D", g["T"], [v for v in rows if np.isfinite(v["D"])], None)
                w["D"] = float(np.exp(-r_ * g["T"])) if r_ is not None else (D_i if D_i is not None else 1.0)
            if r_ is not None:
                w.update(F=S * np.exp((r_ - q_) * g["T"]), D=float(np.exp(-r_ * g["T"])), fallback="rates")
            else:
                w.update(F=S * np.exp(-q_ * g["T"]) / w["D"], fallback="forward from q")
    have = [w for w in rows if w["fallback"] is not None]
    for w, g in zip(rows, groups, strict=True):
        if w["fallback"] is not None:
            continue
        F_i = _interp("F", g["T"], have, S)
        if F_i is not None:
            if not np.isfinite(w["D"]):
                D_i = _interp("D", g["T"], have, None)
                w["D"] = D_i if D_i is not None else 1.0
            w.update(F=F_i, fallback="interpolated")
        elif S is not None:
            D = float(np.exp(-r_ * g["T"])) if r_ is not None else 1.0
            w.update(F=S / D, D=D, fallback="rates, q = 0" if r_ is not None else "spot, zero carry")
        else:
            raise ValueError("no usable pair and no spot")
    for w, g in zip(rows, groups, strict=True):
        if w["fallback"] in ("rates", "forward from q", "rates, q = 0"):
            if len(g["K"]):
                idx = _near(g["K"], w["F"], g["T"], cfg, min(len(g["K"]), cfg.parity_min_pairs))
                res = g["z"][idx] - w["D"] * (w["F"] - g["K"][idx])
                w.update(n_pairs=len(idx), residual=1.4826 * float(np.median(np.abs(res))))
            else:
                w.update(n_pairs=0, residual=np.nan)
    out = pd.DataFrame(rows)
    out["n_pairs"] = out["n_pairs"].astype(int)
    out["fallback"] = out["fallback"].astype(str)
    return out.sort_values("T", ignore_index=True)
