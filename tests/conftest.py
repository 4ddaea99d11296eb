"""Shared test fixtures: paths to ../shared/data (skip when absent), Hypothesis profiles, and the
session hooks of the Hypothesis example budget (tests/hypothesis_budget.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests import hypothesis_budget

# before any test module imports it: the shared checks report their asserts like the test's own
pytest.register_assert_rewrite("tests.helpers")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Derandomised everywhere, so that a failure reproduces; CI runs more examples.
settings.register_profile("dev", derandomize=True, max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", derandomize=True, max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``, or skip the test with the reason when it is absent (a user's fresh clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (only beside the project's checkout)")
    return SHARED_DATA


_VERDICT = pytest.StashKey[hypothesis_budget.Verdict]()   # the budget's verdict, from sessionfinish to the summary


def pytest_sessionfinish(session, exitstatus):
    """On a full run with the ``ci`` profile, fail the session when the counted property tests tried fewer
    than ``hypothesis_budget.BUDGET`` examples in total (the verdict is printed by the terminal summary)."""
    v = hypothesis_budget.session_verdict(Path(session.config.rootpath) / "tests", settings().max_examples)
    session.config.stash[_VERDICT] = v
    if v.status == "fail" and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the examples each counted property test ran and the budget's verdict (when any ran)."""
    v = config.stash.get(_VERDICT, None)
    if v is None or not v.counts:
        return
    tr = terminalreporter
    tr.write_sep("-", "Hypothesis example budget")
    for key, n in sorted(v.counts.items()):
        tr.write_line(f"{n:7,d}  {key}")
    if v.status == "fail":
        tr.write_line(f"FAILED example budget: {v.message}", red=True, bold=True)
    else:
        tr.write_line(f"example budget {'met' if v.status == 'pass' else 'not checked'}: {v.message}",
                      green=v.status == "pass")
