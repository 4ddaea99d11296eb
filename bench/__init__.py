"""`make bench` (``python -m bench``): our figures beside each peer's, measured in the same run.

Every module ``bench/bench_*.py`` exposes ``run(quick: bool = False) -> list[dict]``; each dict is one
row of the table (keys in ``bench.common.ROW_KEYS``). The harness (``bench/__main__.py``) discovers
the modules, runs them, prints one markdown table and saves it to ``bench/RESULTS.md``.
"""
from __future__ import annotations

import os

# Single-threaded figures: BLAS/OpenMP pools must be pinned before numpy is first imported
# (``python -m bench`` imports this package first). setdefault so a user can still override.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ.setdefault(_var, "1")
