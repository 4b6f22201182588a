"""Peak memory of a notebook's whole process tree while it executes: does the course fit Binder?

    result = measure_notebook("notebooks/05_quantization_memory.ipynb")
    result.peak_bytes, result.peak_processes, result.seconds, result.error

    with TreeSampler() as sampler:      # any work that starts processes
        ...
    sampler.peak_bytes

Binder gives a session about 2 GB, and like any container limit it counts every process of the
session: the kernel and all it starts (a benchmark's worker processes, Ray's raylet, GCS and workers).
So we sum the resident size (RSS) of the kernel and all its descendants, sampled every 50 ms, and
keep the largest sum. Summed RSS counts pages that processes share (libraries, Ray's object store)
once per process, so it is an upper bound on what the container is charged: conservative.
Memory that lives for less than the sampling interval can be missed; the course's peaks (models,
Ray) live for seconds.

`vlm-course bench --suite notebooks` runs this on every notebook (one at a time), writes a table
and a figure; the notebook runs of `make test` assert it (conftest.py at the repository root).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Binder's limit is "about 2 GB" (mybinder.org's pods get 2G); 2e9 bytes keeps us on the safe side of it.
BINDER_LIMIT_BYTES = 2_000_000_000
NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"  # in a source checkout


class TreeSampler:
    """Sample, in a background thread, the summed RSS of the processes below `parent` (default: this
    process) that were not there when sampling started; keep the peak. Use as a context manager."""

    def __init__(self, parent: int | None = None, interval: float = 0.05, include_parent: bool = False):
        import psutil

        self._psutil = psutil
        self.parent = psutil.Process(parent or os.getpid())
        self.interval = interval
        self.include_parent = include_parent
        self.peak_bytes = 0
        self.peak_processes = 0
        self.peak_by_name: dict[str, int] = {}  # RSS by process name at the peak: what to shrink
        self.samples = 0
        self._before: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _tree(self):
        try:
            procs = [p for p in self.parent.children(recursive=True) if p.pid not in self._before]
        except self._psutil.NoSuchProcess:
            return []
        return [self.parent, *procs] if self.include_parent else procs

    def sample(self) -> int:
        """One sample now: the tree's summed RSS in bytes (also folded into the peak)."""
        total, by_name, alive = 0, {}, 0
        for proc in self._tree():
            try:
                rss = proc.memory_info().rss
                name = _label(proc)
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied, self._psutil.ZombieProcess):
                continue  # it ended between listing and reading: it holds no memory now
            total += rss
            alive += 1
            by_name[name] = by_name.get(name, 0) + rss
        self.samples += 1
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes, self.peak_by_name = total, alive, by_name
        return total

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "TreeSampler":
        try:
            self._before = {p.pid for p in self.parent.children(recursive=True)}
        except self._psutil.NoSuchProcess:
            self._before = set()
        self._thread = threading.Thread(target=self._loop, name="tree-rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()


def _label(proc) -> str:
    """A readable name: Ray's processes name themselves ('ray::ProxyActor'); a Python process is called
    by its module or script ('ipykernel_launcher', 'monitor.py'), as many processes are all 'python3'."""
    name = proc.name()
    if not name.startswith("python"):
        return name
    args = proc.cmdline()[1:]
    for i, arg in enumerate(args):
        if arg == "-m" and i + 1 < len(args):
            return args[i + 1]
        if arg == "-c":
            return "python -c"
        if not arg.startswith("-"):
            return os.path.basename(arg)
    return name


@dataclass
class NotebookMemory:
    """One notebook's measurement."""

    notebook: str
    peak_bytes: int
    peak_processes: int
    seconds: float
    model: str
    error: str | None = None
    peak_by_name: dict[str, int] = field(default_factory=dict)
    limit_bytes: int = BINDER_LIMIT_BYTES

    @property
    def fits(self) -> bool:
        return self.peak_bytes < self.limit_bytes


@contextmanager
def kernel_environment(env: dict | None):
    """Set `env` in os.environ for a kernel started inside the block to inherit, and restore it after."""
    saved = {name: os.environ.get(name) for name in (env or {})}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def measure_notebook(path: str | os.PathLike, *, model: str | None = None, timeout: int = 900,
                     interval: float = 0.05, limit_bytes: int = BINDER_LIMIT_BYTES) -> NotebookMemory:
    """Execute a notebook top to bottom in a fresh kernel (as nbmake does: nbclient, the notebook's own
    folder as working directory) while sampling the kernel's whole process tree. The kernel is told it has
    `limit_bytes` (VLM_COURSE_MEMORY_LIMIT, unless already set), as a Binder session would have, so that a
    section too big for it skips as it would there (vlm_course.system.available_memory)."""
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    except ImportError:
        from .errors import missing_extra

        raise missing_extra("nbclient", "course") from None

    from .system import MEMORY_LIMIT_ENV

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    env = {MEMORY_LIMIT_ENV: os.environ.get(MEMORY_LIMIT_ENV) or str(limit_bytes)}  # the kernel inherits these
    if model:
        env["VLM_COURSE_MODEL"] = str(Path(model).resolve()) if Path(model).exists() else model
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    error = None
    start = time.perf_counter()
    with kernel_environment(env), TreeSampler(interval=interval) as sampler:
        try:
            client.execute()
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # tracebacks come coloured
            lines = [line for line in text.strip().splitlines() if line.strip()]
            error = f"{type(e).__name__}: {lines[-1] if lines else ''}"[:300]
    return NotebookMemory(path.name, sampler.peak_bytes, sampler.peak_processes, time.perf_counter() - start,
                          model or os.environ.get("VLM_COURSE_MODEL") or "tiny", error, sampler.peak_by_name,
                          limit_bytes)


def find_notebooks(selection: str | None = None, folder: str | os.PathLike | None = None) -> list[Path]:
    """Notebooks by number or name ('05,07', 'notebooks/07_serving.ipynb'); all of them by default."""
    from .errors import VLMCourseError

    folder = Path(folder) if folder else NOTEBOOKS_DIR
    every = sorted(folder.glob("*.ipynb")) if folder.is_dir() else []
    if not selection:
        if not every:
            raise VLMCourseError(f"No notebooks in {folder}: run from a checkout of the course, or name them "
                                 "(--notebooks path/to/05_quantization_memory.ipynb).")
        return every
    chosen = []
    for item in filter(None, (s.strip() for s in selection.split(","))):
        if Path(item).is_file():
            chosen.append(Path(item))
            continue
        match = [p for p in every if p.name.startswith(item) or p.stem == item]
        if len(match) != 1:
            raise VLMCourseError(f"No single notebook matches {item!r} in {folder} "
                                 f"(choose from {', '.join(p.name[:2] for p in every) or 'none'}).")
        chosen.extend(match)
    return chosen


def format_results(results: list[NotebookMemory]) -> str:
    lines = [f"{'notebook':<32}{'peak GB':>9}{'procs':>7}{'s':>7}  fits {results[0].limit_bytes / 1e9:.1f} GB"
             if results else "no notebooks"]
    for r in results:
        top = ", ".join(f"{name} {b / 1e9:.2f}" for name, b in
                        sorted(r.peak_by_name.items(), key=lambda kv: -kv[1])[:3])
        lines.append(f"{r.notebook:<32}{r.peak_bytes / 1e9:>9.2f}{r.peak_processes:>7}{r.seconds:>7.0f}  "
                     f"{'yes' if r.fits else 'NO '}  ({top})" + (f"  error: {r.error}" if r.error else ""))
    return "\n".join(lines)


def plot_results(results: list[NotebookMemory], title: str = "peak memory of each notebook's process tree"):
    """Bars of each notebook's peak against Binder's limit; returns the figure."""
    from .plots import pyplot

    plt = pyplot()
    names = [r.notebook.split("_")[0] for r in results]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(names, [r.peak_bytes / 1e9 for r in results],
           color=["tab:blue" if r.fits else "tab:red" for r in results])
    limit = results[0].limit_bytes / 1e9 if results else BINDER_LIMIT_BYTES / 1e9
    ax.axhline(limit, color="black", linestyle="--", label=f"Binder limit ({limit:.0f} GB)")
    ax.set_xlabel("notebook")
    ax.set_ylabel("peak summed RSS, GB")
    ax.set_title(title, fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def run_cli(selection: str | None, model: str | None, out: str, name: str | None, timeout: int,
            limit_bytes: int = BINDER_LIMIT_BYTES) -> int:
    """`vlm-course bench --suite notebooks`: each notebook, one at a time; 1 if any errs or does not fit."""
    from tqdm.auto import tqdm

    results = []
    for path in tqdm(find_notebooks(selection), desc="notebooks", unit="notebook"):
        results.append(measure_notebook(path, model=model, timeout=timeout, limit_bytes=limit_bytes))
    print(format_results(results))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or "notebook-memory"
    (out_dir / f"{stem}.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    plot_results(results).savefig(out_dir / f"{stem}.png", dpi=110, bbox_inches="tight")
    print(f"wrote {out_dir / f'{stem}.json'} and {out_dir / f'{stem}.png'}")
    return 0 if all(r.fits and not r.error for r in results) else 1
