"""What a test needs, and the rule that CI runs every test.

Outside CI a test whose optional dependency is missing is skipped, with the reason and how to
install it. In CI (CI=true, which `.ci/run` sets itself) it fails instead: an extra that stops
importing must turn CI red, not quietly shrink the suite. The hooks at the bottom (registered by
conftest.py) also fail a CI run that skipped anything at all, however the skip came about.
"""

from __future__ import annotations

import importlib
import os

import pytest

# module -> the pip extra that installs it (pyproject.toml)
EXTRAS = {"openai": "dev", "fastapi": "serve", "hypothesis": "dev", "ray": "ray", "ray.serve": "ray",
          "ipywidgets": "widgets", "optimum.quanto": "quant", "bitsandbytes": "quant", "torchao": "quant", "pydantic": "serve"}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(what: str) -> None:
    """Skip the current test (or module) because of `what`, except in CI, where it is a failure."""
    if in_ci():
        pytest.fail(f"{what} (in CI every test must run: CI=true turns this skip into a failure)", pytrace=False)
    pytest.skip(what, allow_module_level=True)


def need(module: str):
    """Import and return `module`; if it cannot be imported, skip outside CI and fail in CI."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        error = e
    extra = EXTRAS.get(module)
    how = f"pip install -e '.[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
    missing(f"{module} cannot be imported ({error}); install it with: {how}")


# -- the CI rule: 0 skipped ------------------------------------------------------------------------

_skipped: list[str] = []


def _record(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):  # an xfail is reported as skipped too: not ours
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report):
    _record(report)


def pytest_collectreport(report):
    _record(report)


def pytest_sessionfinish(session, exitstatus):
    if in_ci() and _skipped and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if in_ci() and _skipped:
        terminalreporter.section("CI must not skip", sep="=", red=True, bold=True)
        terminalreporter.line(f"{len(_skipped)} skipped with CI=true; every test must run in CI:")
        for line in _skipped:
            terminalreporter.line(f"  {line}")
