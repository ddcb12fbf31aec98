"""Shared pytest setup: make ``tests/`` importable (``import graphs``, ``import helpers``), common fixtures, and
the ONNXDEPTH_REQUIRE_EXTRAS guard (``require_extras.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import graphs  # noqa: E402
import helpers  # noqa: E402
# ONNXDEPTH_REQUIRE_EXTRAS=1 (.ci/run): a skip for a missing optional package fails; see require_extras.py.
from require_extras import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402, F401

pytest_plugins = ["pytester"]  # tests/test_require_extras.py runs pytest on throwaway test files


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """A fresh temporary directory (alias of ``tmp_path``)."""
    return tmp_path


@pytest.fixture(params=sorted(graphs.FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture
def model(family) -> onnx.ModelProto:
    return graphs.FAMILIES[family]()


@pytest.fixture
def save_model(tmp):
    """save_model(model, name) -> path of MODEL written into the test's tmp dir."""

    def _save(model: onnx.ModelProto, name: str = "m.onnx") -> Path:
        path = tmp / name
        onnx.save_model(model, str(path))
        return path

    return _save


@pytest.fixture
def cli(capsys):
    """cli(*argv) -> (exit code, stdout, stderr) of onnxdepth.cli.main run in-process."""
    from onnxdepth.cli import main

    def _run(*argv):
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return _run


def pytest_report_header(config):
    return f"onnxdepth test families: {', '.join(sorted(helpers.ALL_BUILDERS))}"
