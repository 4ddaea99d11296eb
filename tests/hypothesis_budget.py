"""The Hypothesis example budget: every property test counts the examples it runs (``@counted``), and the
session hooks in ``tests/conftest.py`` check, on a full run with the ``ci`` profile, that the whole suite
tried at least ``BUDGET`` examples (docs/ROBUSTNESS.md).

"Full run" means: every test module under the test root that uses ``@counted`` was collected and every
counted test in it ran at least once (a ``-k``/``-m`` selection or a single file skips the check, saying
why). The counts are per process: no ``pytest-xdist``.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hypothesis.errors import UnsatisfiedAssumption

BUDGET = 10_000
CI_MAX_EXAMPLES = 400          # the ``ci`` profile's examples per test (tests/conftest.py)
MARKER = re.compile(r"^@counted\b", re.MULTILINE)   # a test module holding counted property tests

EXAMPLES: Counter = Counter()  # "path/to/test_x.py::test_name" -> examples run (body calls)
REGISTERED: set[str] = set()   # every counted test of every imported module


def _test_id(fn) -> str:
    """``tests/sub/test_x.py::test_name`` from the function's module (tests is a package)."""
    return fn.__module__.replace(".", "/") + ".py::" + fn.__name__


def counted(fn):
    """Count the examples a property test runs (body calls, shrinking included; ``assume``-rejected
    calls are not counted, as Hypothesis does not count them either). Put it under ``@given``."""
    key = _test_id(fn)
    REGISTERED.add(key)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        EXAMPLES[key] += 1
        try:
            return fn(*args, **kwargs)
        except UnsatisfiedAssumption:
            EXAMPLES[key] -= 1
            raise

    return wrapper


def property_modules(test_root: Path) -> set[str]:
    """The test modules under ``test_root`` (its parent is the rootdir) with a line starting ``@counted``,
    as ``tests/sub/test_x.py`` paths relative to the rootdir; none when ``test_root`` is not a folder."""
    root = Path(test_root)
    if not root.is_dir():
        return set()
    return {p.relative_to(root.parent).as_posix() for p in root.rglob("test_*.py")
            if MARKER.search(p.read_text(encoding="utf-8", errors="replace"))}


@dataclass(frozen=True)
class Verdict:
    """The budget check of one session: ``status`` is ``"pass"``, ``"fail"`` or ``"skip"`` (not a full
    ``ci`` run, with the reason in ``message``); ``total`` examples over ``counts`` (test id -> examples)."""
    status: str
    total: int
    counts: dict
    message: str


def verdict(counts: dict, registered: set, expected_modules: set, max_examples: int,
            budget: int = BUDGET) -> Verdict:
    """Judge one session: the budget applies only when ``max_examples >= CI_MAX_EXAMPLES``, every module in
    ``expected_modules`` registered counted tests and every registered test ran."""
    total = int(sum(counts.values()))
    ran = set(counts)
    seen_modules = {key.split("::", 1)[0] for key in registered}
    head = f"{total:,} Hypothesis examples over {len(ran)} property tests (max_examples={max_examples})"
    if max_examples < CI_MAX_EXAMPLES:
        return Verdict("skip", total, dict(counts), f"{head}: budget checked only with the ci profile")
    missing = sorted(expected_modules - seen_modules)
    if missing:
        return Verdict("skip", total, dict(counts), f"{head}: budget checked only on a full run; "
                       f"{len(missing)} of {len(expected_modules)} property modules not collected, e.g. {missing[0]}")
    if ran != registered:
        return Verdict("skip", total, dict(counts), f"{head}: budget checked only on a full run; "
                       f"{len(registered - ran)} of {len(registered)} counted tests did not run")
    if total < budget:
        return Verdict("fail", total, dict(counts), f"{head}: below the budget of {budget:,} (docs/ROBUSTNESS.md)")
    return Verdict("pass", total, dict(counts), f"{head}: budget of {budget:,} met")


def session_verdict(test_root: Path, max_examples: int) -> Verdict:
    """``verdict`` of this process's counts against the property modules found under ``test_root``."""
    return verdict(EXAMPLES, REGISTERED, property_modules(test_root), max_examples, BUDGET)
