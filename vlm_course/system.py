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
