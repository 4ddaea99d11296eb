"""The Hypothesis example budget (tests/hypothesis_budget.py and its session hooks in tests/conftest.py):
the verdict's rules, then the hooks themselves in a pytest run of their own (pytester, a subprocess so
that its counts do not mix with this session's)."""
from __future__ import annotations

import textwrap

import pytest

from tests.conftest import ROOT
from tests.hypothesis_budget import BUDGET, CI_MAX_EXAMPLES, property_modules, verdict

pytest_plugins = ["pytester"]

A, B = "tests/test_a_properties.py::test_a", "tests/sub/test_properties.py::test_b"
MODULES = {"tests/test_a_properties.py", "tests/sub/test_properties.py"}


def test_verdict_passes_and_fails_on_the_total_of_a_full_ci_run():
    full = {A: BUDGET // 2, B: BUDGET // 2}
    assert verdict(full, {A, B}, MODULES, CI_MAX_EXAMPLES).status == "pass"
    short = {A: BUDGET // 2, B: BUDGET // 2 - 1}
    v = verdict(short, {A, B}, MODULES, CI_MAX_EXAMPLES)
    assert v.status == "fail" and v.total == BUDGET - 1 and f"{BUDGET:,}" in v.message


@pytest.mark.parametrize("counts, registered, modules, max_examples, why", [
    ({A: 5, B: 5}, {A, B}, MODULES, 60, "ci profile"),                                       # dev profile
    ({A: 5}, {A}, MODULES, CI_MAX_EXAMPLES, "1 of 2 property modules not collected"),  # one file only
    ({A: 5}, {A, B}, MODULES, CI_MAX_EXAMPLES, "1 of 2 counted tests did not run"),           # -k / -m selection
])
def test_verdict_skips_a_partial_or_dev_run_saying_why(counts, registered, modules, max_examples, why):
    v = verdict(counts, registered, modules, max_examples)
    assert v.status == "skip" and why in v.message and v.total == sum(counts.values())


def test_every_property_module_of_the_suite_is_found():
    found = property_modules(ROOT / "tests")
    assert "tests/test_black_properties.py" in found and "tests/surface/test_properties.py" in found
    assert "tests/test_hypothesis_budget.py" not in found    # the sources below are indented text


INNER_TEST = """
    from hypothesis import given, strategies as st

    from tests.hypothesis_budget import counted


    @given(st.integers())
    @counted
    def test_p(n):
        assert isinstance(n, int)
"""

INNER_CONFTEST = """
    from tests import hypothesis_budget
    from tests.conftest import pytest_sessionfinish, pytest_terminal_summary  # noqa: F401  (the hooks)

    hypothesis_budget.BUDGET = {budget}
"""


@pytest.mark.parametrize("budget, rc, line", [(CI_MAX_EXAMPLES - 1, 0, "example budget met"),
                                              (CI_MAX_EXAMPLES + 1, 1, "FAILED example budget")])
def test_session_hook_fails_the_run_below_the_budget(pytester, monkeypatch, budget, rc, line):
    """One counted test at the ci profile's 400 examples: the run passes under a budget of 399 and fails,
    with its tests green, under 401; the per-test count is printed."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("HYPOTHESIS_PROFILE", "ci")
    pytester.makepyfile(test_inner=textwrap.dedent(INNER_TEST))
    pytester.makeconftest(textwrap.dedent(INNER_CONFTEST.format(budget=budget)))
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    assert res.ret == rc
    res.stdout.fnmatch_lines([f"*{CI_MAX_EXAMPLES}  test_inner.py::test_p", f"*{line}*"])
