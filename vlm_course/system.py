"""What this machine offers the course: versions, device, attention backends, optional extras."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform

# optional package -> the pip extra that installs it
OPTIONAL = {"bitsandbytes": "quant", "optimum-quanto": "quant", "torchao": "quant", "ipywidgets": "widgets",
            "fastapi": "serve", "uvicorn": "serve", "ray": "ray", "openai": "dev", "playwright": "dev",
            "flash-attn": "(GPU only: pip install flash-attn)"}


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def report() -> dict:
    """A dict of facts about this environment, for `vlm-course info` and notebook 00."""
    import torch

    from .models import available_attention, default_model_id, pick_device

    device = pick_device()
    facts = {
        "python": platform.python_version(),
        "vlm-course": version("vlm-course"),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "device": str(device),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu threads": torch.get_num_threads(),
        "attention backends": available_attention(device),
        "default model": default_model_id(),
    }
    facts["optional"] = {name: version(name) for name in OPTIONAL}
    return facts


def print_report(facts: dict | None = None) -> None:
    facts = facts or report()
    for key, value in facts.items():
        if key == "optional":
            for name, v in value.items():
                print(f"  {name:<22}{v or 'not installed (extra: ' + OPTIONAL[name] + ')'}")
        else:
            print(f"{key:<24}{', '.join(value) if isinstance(value, list) else value}")


# ---------------------------------------------------------------- memory left to this session

MEMORY_LIMIT_ENV = "VLM_COURSE_MEMORY_LIMIT"  # e.g. "2G": behave as on a machine of that size (Binder)


def parse_bytes(text: str) -> int:
    """'2G', '1.5GB', '512M', '2Gi', '2000000000' -> bytes (G = 10**9, Gi = 2**30, as Kubernetes writes them)."""
    import re

    from .errors import BackendError

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?)B?\s*", text.upper())
    if not match:
        raise BackendError(f"{text!r} is not an amount of memory: write bytes or a number with K, M, G or T "
                             "(Ki, Mi, Gi, Ti for powers of 1024), e.g. 2G.")
    number, unit, binary = match.groups()
    power = " KMGT".index(unit or " ")
    return int(float(number) * (1024 if binary else 1000) ** power)


def _cgroup_room() -> int | None:
    """The container's limit minus its use (cgroup v2, then v1); None where there is no limit."""
    from pathlib import Path

    candidates = [("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")]
    for limit_file, usage_file in candidates:
        try:
            limit = (Path("/sys/fs/cgroup") / limit_file).read_text().strip()
            usage = int((Path("/sys/fs/cgroup") / usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # v1 writes an unlimited limit as a huge number
            return int(limit) - usage
    return None


def tree_rss(pid: int | None = None) -> int:
    """Summed resident size of a process (default: this one) and all its descendants, in bytes."""
    import os

    import psutil

    root = psutil.Process(pid or os.getpid())
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def available_memory() -> int:
    """Bytes this session can still take: the least of the machine's available memory, the room left
    under a container's limit (Binder, Docker: its cgroup), and VLM_COURSE_MEMORY_LIMIT (e.g. "2G", to
    behave as on a machine of that size, as the notebook tests do) minus what this process and its
    children hold. On Binder the machine's own figure is the host's, far above what the session may use."""
    import os

    import psutil

    room = [psutil.virtual_memory().available]
    cgroup = _cgroup_room()
    if cgroup is not None:
        room.append(cgroup)
    if os.environ.get(MEMORY_LIMIT_ENV):
        room.append(parse_bytes(os.environ[MEMORY_LIMIT_ENV]) - tree_rss())
    return max(0, min(room))
