"""CI runs every test: `need()` skips outside CI and fails in it, and a CI run that skipped anything fails.

Small pytest sessions run in fresh processes with tests/_need.py as their plugin, so what is checked
is pytest's own exit code and summary, the way CI sees them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
MODULE_LEVEL = {"module_level_need": 'from _need import need\n\nneed("no_such_module_vlm_course")\n\ndef test_it():\n    pass\n'}
SKIPPING = {
    "needs_a_missing_module": 'from _need import need\n\ndef test_it():\n    need("no_such_module_vlm_course")\n',
    "plain_skip": 'import pytest\n\n@pytest.mark.skip(reason="not today")\ndef test_it():\n    pass\n',
}
RUNNING = {
    "all_run": 'from _need import need\n\ndef test_it():\n    assert need("json").dumps(1) == "1"\n',
    "xfail_is_not_a_skip": 'import pytest\n\n@pytest.mark.xfail(reason="known", strict=True)\ndef test_it():\n    assert False\n',
}


def run_session(folder: Path, cases: dict, ci: bool) -> subprocess.CompletedProcess:
    folder.mkdir()
    (folder / "pytest.ini").write_text("[pytest]\n")  # not the project's configuration
    for name, source in cases.items():
        (folder / f"test_{name}.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    env["COLUMNS"] = "300"  # pytest cuts summary lines to the terminal's width
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only _need: the installed plugins take seconds to import
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "_need", "-p", "no:cacheprovider", "-rfEs",
                           f"--rootdir={folder}", str(folder)], capture_output=True, text=True, env=env,
                          timeout=120, cwd=folder)


def test_outside_ci_a_missing_dependency_is_a_skip_with_the_reason(tmp_path):
    out = run_session(tmp_path / "s", {**MODULE_LEVEL, **SKIPPING, **RUNNING}, ci=False)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "1 passed, 3 skipped, 1 xfailed" in out.stdout.splitlines()[-1]
    assert "no_such_module_vlm_course cannot be imported" in out.stdout and "pip install" in out.stdout
    assert "CI must not skip" not in out.stdout


def test_in_ci_every_skip_fails_the_run_and_is_named(tmp_path):
    out = run_session(tmp_path / "s", {**SKIPPING, **RUNNING}, ci=True)
    assert out.returncode == 1, out.stdout[-3000:]
    summary = out.stdout.splitlines()[-1]
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed" in summary, summary  # need() fails in CI; a plain skip...
    assert "FAILED test_needs_a_missing_module.py::test_it" in out.stdout
    assert "CI must not skip" in out.stdout and "test_plain_skip.py::test_it" in out.stdout and "not today" in out.stdout


def test_in_ci_a_plain_skip_alone_fails_the_run(tmp_path):
    out = run_session(tmp_path / "s", {"plain_skip": SKIPPING["plain_skip"], **RUNNING}, ci=True)
    assert out.returncode == 1, out.stdout[-3000:]
    assert "1 passed, 1 skipped, 1 xfailed" in out.stdout.splitlines()[-1] and "CI must not skip" in out.stdout


def test_in_ci_a_module_level_need_is_a_collection_error(tmp_path):
    out = run_session(tmp_path / "s", MODULE_LEVEL, ci=True)
    assert out.returncode == 2 and "ERROR collecting test_module_level_need.py" in out.stdout
    assert "CI=true turns this skip into a failure" in out.stdout, out.stdout[-3000:]


def test_in_ci_a_run_that_skips_nothing_passes(tmp_path):
    out = run_session(tmp_path / "s", RUNNING, ci=True)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "1 passed, 1 xfailed" in out.stdout.splitlines()[-1] and "CI must not skip" not in out.stdout


def test_the_ci_entry_point_sets_ci_itself():
    script = (TESTS.parent / ".ci" / "run").read_text()
    assert "\nexport CI=true\n" in script.split("\nmake test")[0]


def test_no_test_skips_on_its_own():
    """Skips go through _need (which fails in CI), never straight to pytest."""
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        if path.name in ("_need.py", "test_need.py"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(word in line for word in ("importorskip(", "pytest.skip(", "mark.skip", "skipif(")):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == [], "use need() from tests/_need.py instead:\n" + "\n".join(offenders)
