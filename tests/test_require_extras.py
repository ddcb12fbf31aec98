"""The ONNXDEPTH_REQUIRE_EXTRAS guard (require_extras.py): under it a skip for a missing package fails,
a machine-dependent skip stays a skip; without it all three are plain skips."""

from __future__ import annotations

from pathlib import Path

import pytest

from require_extras import ENV

TESTS_DIR = Path(__file__).resolve().parent

MODULE_SKIP = """
import pytest
pytest.importorskip("onnxdepth_no_such_package")

def test_never_collected():
    pass
"""
RUNTIME_IMPORT_SKIP = """
import pytest

@pytest.fixture
def extra():
    return pytest.importorskip("onnxdepth_no_such_package")

def test_needs_a_package(extra):
    pass

def test_imports_a_package():
    pytest.importorskip("onnxdepth_no_such_package")
"""
MACHINE_SKIP = """
import pytest

@pytest.mark.skipif(True, reason="no Chromium on PATH")
def test_needs_chromium():
    pass

def test_needs_cuda():
    pytest.skip("no CUDA device")

def test_runs():
    pass
"""


@pytest.fixture
def run(pytester, monkeypatch):
    """run(source, required) -> pytest's RunResult on a file holding SOURCE, in a subprocess, with the
    plugin loaded the way tests/conftest.py loads it and ONNXDEPTH_REQUIRE_EXTRAS set or unset."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))  # the subprocess imports require_extras from tests/

    def _run(source: str, required: bool):
        if required:
            monkeypatch.setenv(ENV, "1")
        else:
            monkeypatch.delenv(ENV, raising=False)  # .ci/run sets it for the outer run too
        # a passing file beside it, as in the real suite (a run with only a skipped module exits 5)
        pytester.makepyfile(test_case=source, test_ok="def test_ok():\n    pass\n")
        return pytester.runpytest_subprocess("-p", "require_extras", "-p", "no:cacheprovider")

    return _run


def test_module_level_skip_is_a_skip_without_the_variable(run):
    result = run(MODULE_SKIP, required=False)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1)


def test_module_level_skip_is_a_collection_error_under_the_variable(run):
    result = run(MODULE_SKIP, required=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error stops the run: exit 2
    result.assert_outcomes(errors=1)  # (test_ok is collected but not run)
    result.stdout.fnmatch_lines(["*whole module was skipped*onnxdepth_no_such_package*"])


def test_runtime_importorskip_fails_under_the_variable(run):
    assert run(RUNTIME_IMPORT_SKIP, required=False).ret == pytest.ExitCode.OK
    result = run(RUNTIME_IMPORT_SKIP, required=True)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # a skip in a fixture becomes a setup error, one in the test body a failure
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*skipped for a missing package*onnxdepth_no_such_package*"])


@pytest.mark.parametrize("required", [False, True])
def test_machine_dependent_skips_stay_skips(run, required):
    result = run(MACHINE_SKIP, required=required)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=2, skipped=2)
