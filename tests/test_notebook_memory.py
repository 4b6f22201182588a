"""The memory measure of vlm_course.notebook_memory counts what it claims: every process below the kernel
(children and grandchildren), not the processes that were there before, and reports a notebook's error.

The notebooks themselves are held to Binder's limit while `make test` executes them (conftest.py at the
repository root samples each nbmake run with the same TreeSampler), so no notebook runs twice for it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import nbformat
import pytest
from _need import need  # skips outside CI, fails in CI

from vlm_course.notebook_memory import TreeSampler, find_notebooks, measure_notebook

MB = 1_000_000

# A process that touches `mb` MB, optionally starts a grandchild that touches as much, says "ready", and
# waits for its stdin to close.
HOLDER = """
import subprocess, sys
mb, nested = int(sys.argv[1]), sys.argv[2] == "1"
block = bytearray(mb * 1_000_000)
for i in range(0, len(block), 4096):
    block[i] = 1
child = subprocess.Popen([sys.executable, "-c", sys.argv[3], str(mb), "0", sys.argv[3]], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True) if nested else None
if child:
    child.stdout.readline()
print("ready", flush=True)
sys.stdin.read()
if child:
    child.stdin.close(); child.wait()
"""


def hold(mb: int, nested: bool) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(mb), "1" if nested else "0", HOLDER],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)


def test_sampler_counts_grandchildren_and_not_what_was_there_before():
    before = hold(150, nested=False)  # running before sampling starts: not part of the measured work
    try:
        with TreeSampler(interval=0.02) as sampler:
            work = hold(150, nested=True)  # a child of 150 MB that starts a grandchild of 150 MB
            time.sleep(0.3)
            release(work)
    finally:
        release(before)
    assert sampler.peak_processes == 2
    assert 300 * MB <= sampler.peak_bytes < 450 * MB, sampler.peak_by_name
    assert sampler.samples >= 5


def notebook(tmp_path, name: str, *sources: str):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_a_notebook_is_measured_with_what_its_kernel_starts(tmp_path):
    path = notebook(tmp_path, "50_holds.ipynb",
                    "import subprocess, sys, time\n"
                    f"HOLDER = {HOLDER!r}\n"
                    "p = subprocess.Popen([sys.executable, '-c', HOLDER, '300', '0', HOLDER], stdin=subprocess.PIPE,\n"
                    "                     stdout=subprocess.PIPE, text=True)\n"
                    "assert p.stdout.readline().strip() == 'ready'\n"
                    "time.sleep(0.3); p.stdin.close(); p.wait()")
    result = measure_notebook(path, interval=0.02)
    assert result.error is None
    assert result.peak_processes == 2  # the kernel and the process it started
    assert result.peak_bytes >= 300 * MB + 30 * MB  # the holder plus a kernel (which alone is tens of MB)
    assert "ipykernel_launcher" in result.peak_by_name
    assert result.fits

    failing = notebook(tmp_path, "51_fails.ipynb", "raise ValueError('no such scene')")
    result = measure_notebook(failing)
    assert result.error and "ValueError: no such scene" in result.error


@pytest.mark.slow
def test_bench_suite_notebooks_writes_the_table_and_fails_when_a_notebook_does_not_fit(tmp_path, capsys):
    from vlm_course.bench import main

    path = notebook(tmp_path, "52_small.ipynb", "x = 1")
    assert main(["--suite", "notebooks", "--notebooks", str(path), "--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "notebook-memory.json").read_text())
    assert [r["notebook"] for r in rows] == ["52_small.ipynb"] and rows[0]["peak_bytes"] > 0
    assert (tmp_path / "out" / "notebook-memory.png").stat().st_size > 0
    assert "52_small.ipynb" in capsys.readouterr().out

    # A kernel takes tens of MB: under a 10 MB limit the same notebook does not fit, and the command says so.
    assert main(["--suite", "notebooks", "--notebooks", str(path), "--limit-gb", "0.01", "--out", str(tmp_path)]) == 1
    assert "NO" in capsys.readouterr().out


def test_notebooks_are_chosen_by_number():
    chosen = find_notebooks("05,07")
    assert [p.name[:2] for p in chosen] == ["05", "07"]
    from vlm_course.errors import VLMCourseError

    with pytest.raises(VLMCourseError, match="No single notebook"):
        find_notebooks("99")


def test_amounts_of_memory_parse_like_kubernetes_writes_them():
    from vlm_course.errors import VLMCourseError
    from vlm_course.system import parse_bytes

    assert parse_bytes("2G") == parse_bytes("2GB") == parse_bytes("2000000000") == 2_000_000_000
    assert parse_bytes("2Gi") == 2 * 1024 ** 3 and parse_bytes("512M") == 512_000_000 and parse_bytes("1.5g") == 1.5e9
    for bad in ("lots", "2 apples", ""):
        with pytest.raises(VLMCourseError, match="not an amount of memory"):
            parse_bytes(bad)


def test_a_session_told_its_limit_counts_what_it_already_holds(monkeypatch):
    from vlm_course.system import MEMORY_LIMIT_ENV, available_memory, tree_rss

    held = tree_rss()
    assert held > 10 * MB  # this Python process at least
    # the limit is set above what is held, whatever earlier tests in this process left behind (workers, caches)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, str(held + 500 * MB))
    assert 0 < available_memory() <= 500 * MB + 50 * MB  # a little slack: memory moves between reads
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1M")  # less than this process already holds
    assert available_memory() == 0


def test_ray_serve_is_skipped_with_a_reason_where_memory_is_short(monkeypatch):
    need("pydantic")
    from vlm_course import system
    from vlm_course.serve.ray_app import RAY_SERVE_BYTES, ray_memory_shortfall

    monkeypatch.setenv(system.MEMORY_LIMIT_ENV, "1G")  # less than Ray alone takes
    reason = ray_memory_shortfall(model_bytes=3_000_000)
    assert reason and "Binder" in reason and "left" in reason
    monkeypatch.setattr(system, "available_memory", lambda: RAY_SERVE_BYTES + 3_000_000)
    assert ray_memory_shortfall(model_bytes=3_000_000) is None
    assert ray_memory_shortfall(model_bytes=4_000_000) is not None
