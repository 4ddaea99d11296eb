"""Optional numba kernels: one switch and one thread-safe lazy loader for every module that has one.

A module with a compiled kernel (``core._black_numba``, ``core._forwards_numba``) keeps a numpy path that
gives the same numbers; ``LazyKernel`` imports the kernel module on first use (compiling it, or loading it
from numba's cache), runs the owner's check on it (constants shared with the numpy path, a smoke test), and
falls back to the numpy path, with a warning, when that fails. Setting ``NO_NUMBA_ENV=1`` forces the numpy
path everywhere (the tests use it to cover both backends; ``core.black.use_backend`` sets it).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import threading
import warnings
from typing import Any, Callable

#: set to 1 to force the numpy path
NO_NUMBA_ENV = "DUPIRE_DESK_NO_NUMBA"


def numba_disabled() -> bool:
    """True when ``NO_NUMBA_ENV`` asks for the numpy path."""
    return os.environ.get(NO_NUMBA_ENV, "").strip() not in ("", "0")


class LazyKernel:
    """The kernel module ``module`` of ``owner``, loaded once: ``get()`` returns ``check(module)`` (what the
    owner needs: the module, with any tables), or None for the numpy path (numba absent, the switch set, or
    the kernel unusable: then a ``RuntimeWarning`` names the cause)."""

    def __init__(self, owner: str, module: str, check: Callable[[Any], Any]):
        self.owner, self.module, self.check = owner, module, check
        self._lock = threading.Lock()
        self._state: dict = {}

    def _load(self):
        if importlib.util.find_spec("numba") is None:
            return None  # not installed: the numpy path, silently
        try:
            return self.check(importlib.import_module(self.module))
        except Exception as exc:  # any compile/link failure: numba raises many types
            warnings.warn(f"{self.owner}: the numba kernels are unusable ({type(exc).__name__}: {exc}); "
                          f"using the numpy path (slower). Set {NO_NUMBA_ENV}=1 to silence this.",
                          RuntimeWarning, stacklevel=5)
            return None

    def get(self):
        """What ``check`` returned for the loaded kernel, or None (numpy path)."""
        if numba_disabled():
            return None
        try:
            return self._state["kernel"]
        except KeyError:
            with self._lock:  # one compilation even when Streamlit sessions call in parallel
                if "kernel" not in self._state:
                    self._state["kernel"] = self._load()
            return self._state["kernel"]
