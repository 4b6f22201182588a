"""Every notebook that nbmake executes must fit Binder's memory (about 2 GB for the kernel and every
process it starts). Measured during the normal notebook runs of `make test`, so nothing runs twice:
vlm_course.notebook_memory.TreeSampler sums the RSS of the kernel and all its descendants every 50 ms.

On the tiny model (the course's default, what Binder runs) each notebook runs as on Binder: its kernel
is told it has 2 GB (VLM_COURSE_MEMORY_LIMIT, read by vlm_course.system.available_memory, so a section
that would not fit says so and skips, as it would there), and its peak must stay below that. With
VLM_COURSE_MODEL set to another model the machine's own memory applies and the peaks are only reported.
`vlm-course bench --suite notebooks` measures the same outside pytest."""

from __future__ import annotations

import os

import pytest

_peaks: dict[str, tuple[int, dict[str, int]]] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    if item.path.suffix != ".ipynb":
        return (yield)
    from vlm_course.notebook_memory import BINDER_LIMIT_BYTES, TreeSampler
    from vlm_course.system import MEMORY_LIMIT_ENV

    binder = not os.environ.get("VLM_COURSE_MODEL")
    saved = os.environ.get(MEMORY_LIMIT_ENV)
    if binder and saved is None:
        os.environ[MEMORY_LIMIT_ENV] = str(BINDER_LIMIT_BYTES)  # the kernel inherits it
    try:
        with TreeSampler() as sampler:  # the kernel nbmake starts is a new child of this process
            result = yield
    finally:
        if binder and saved is None:
            del os.environ[MEMORY_LIMIT_ENV]
    _peaks[item.path.name] = (sampler.peak_bytes, sampler.peak_by_name)
    if binder and sampler.peak_bytes >= BINDER_LIMIT_BYTES:
        top = ", ".join(f"{name} {b / 1e9:.2f} GB" for name, b in
                        sorted(sampler.peak_by_name.items(), key=lambda kv: -kv[1])[:5])
        raise AssertionError(f"{item.path.name}: the kernel and the processes it started peaked at "
                             f"{sampler.peak_bytes / 1e9:.2f} GB, above Binder's {BINDER_LIMIT_BYTES / 1e9:.0f} GB "
                             f"(largest: {top}).")
    return result


def pytest_terminal_summary(terminalreporter):
    if not _peaks:
        return
    model = os.environ.get("VLM_COURSE_MODEL") or "the tiny model"
    terminalreporter.section(f"peak memory of each notebook's process tree ({model})")
    for name, (peak, _) in sorted(_peaks.items()):
        terminalreporter.write_line(f"{name:<34}{peak / 1e9:6.2f} GB")
