"""Pytest plugin: with ONNXDEPTH_REQUIRE_EXTRAS=1 (set by .ci/run), a missing optional dependency fails.

CI installs every extra (ultralytics, models, hf, taylor, test), so there a skip for a missing package
means a broken install, not a lighter machine. Without the variable nothing changes: a developer
without the hf extra still gets skips. Under it:

* a test module skipped at collection time (a module-level ``pytest.importorskip`` or
  ``pytest.skip(allow_module_level=True)``) becomes a collection error, whatever the reason: pytest
  then exits 2 and every test in that file is reported, not silently dropped;
* a test skipped at run time because a package is missing (``pytest.importorskip`` in a test or
  fixture, or ``helpers.packaged_model_or_skip``: reasons starting with ``could not import``) fails;
* every other run-time skip stays a skip: those depend on the machine (no Chromium for the report
  screenshot, no CUDA), not on what CI installed.

tests/conftest.py loads it; a pytest run elsewhere can with ``-p require_extras`` (tests/ on the path).
"""

from __future__ import annotations

import os

import pytest

ENV = "ONNXDEPTH_REQUIRE_EXTRAS"
# pytest.importorskip's reason is "could not import 'name': ..."; helpers.packaged_model_or_skip says the same.
MISSING_PACKAGE = "could not import "


def required() -> bool:
    return os.environ.get(ENV, "") == "1"


def _reason(report) -> str:
    """The skip reason of REPORT (a skip's longrepr is (path, line, "Skipped: reason"))."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if required() and report.skipped and isinstance(collector, pytest.Module):
        report.outcome = "failed"
        report.longrepr = (f"{collector.nodeid}: the whole module was skipped at collection ({_reason(report)}), "
                           f"but {ENV}=1: CI installs every extra, so its dependencies must import")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if required() and report.skipped and _reason(report).startswith(MISSING_PACKAGE):
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid}: skipped for a missing package ({_reason(report)}), but {ENV}=1"
