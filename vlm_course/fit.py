"""Fit a model to the device it finds: dtype, attention backend and quantization, decided from plain facts.

    facts = device_facts(torch.device("cuda"))           # capability (7, 5), free bytes, ...
    dtype_for(facts)                                     # float16 on a T4, bfloat16 on an A100
    attention_for("auto", facts, torch.float16)          # ("sdpa", "flash_attention_2 needs compute capability 8.0 ...")
    quant_for("auto", estimates, facts)                  # ("bnb-4bit", "bf16 weights need 16.8 GB, 14.2 GB free ...")

Every decision is a pure function of a `DeviceFacts` (what the device is, how much memory it has free),
so the choices a T4 or an H100 would get are unit-tested on a CPU. `load_vlm` gathers the facts and
calls these; each decision comes with the reason, which `load_vlm` keeps in `VLM.notes`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Mapping

from .errors import BackendError

# bf16 runs natively from Ampere (8.0) on; torch.cuda.is_bf16_supported() also counts emulation (a T4, 7.5).
BF16_CAPABILITY = (8, 0)
# flash-attn 2 supports Ampere, Ada and Hopper GPUs (8.0 and up), in fp16 or bf16 only.
FLASH_CAPABILITY = (8, 0)
# What besides the weights must fit: activations, the KV cache, the CUDA context. The model card's peaks
# for idefics2-8b (22.2 GB bf16 for 16.8 GB of weights, 9.2 GB nf4 for 5.1 GB) are 1.3-1.8x the weights.
HEADROOM_FRACTION = 0.25
HEADROOM_BYTES = 1.5e9
# quant="auto" tries these in order and takes the first that fits.
AUTO_QUANT_ORDER = (None, "bnb-8bit", "bnb-4bit")


@dataclass(frozen=True)
class DeviceFacts:
    """What the decisions need to know about a device; `device_facts()` reads them from the real one."""

    type: str  # 'cuda', 'mps' or 'cpu'
    capability: tuple[int, int] | None = None  # CUDA compute capability
    free_bytes: int | None = None  # memory free for weights on the device (host RAM for the CPU)
    total_bytes: int | None = None
    flash_attn_installed: bool = False  # transformers' own check: is_flash_attn_2_available()
    bitsandbytes_installed: bool = False
    name: str = ""


def device_facts(device) -> DeviceFacts:
    """Read the facts of a torch.device (the current process's view: free memory now)."""
    import torch

    bnb = importlib.util.find_spec("bitsandbytes") is not None
    if device.type == "cuda":
        from transformers.utils import is_flash_attn_2_available

        index = device.index if device.index is not None else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        return DeviceFacts("cuda", tuple(torch.cuda.get_device_capability(index)), int(free), int(total),
                           bool(is_flash_attn_2_available()), bnb, torch.cuda.get_device_name(index))
    import psutil

    memory = psutil.virtual_memory()
    return DeviceFacts(device.type, None, int(memory.available), int(memory.total), False, bnb, device.type)


def dtype_for(facts: DeviceFacts):
    """dtype 'auto': bfloat16 on a GPU that runs it natively (capability >= 8.0), float16 on older GPUs and
    MPS, float32 on the CPU (where half precision is slower and less exact)."""
    import torch

    if facts.type == "cuda":
        return torch.bfloat16 if facts.capability and tuple(facts.capability) >= BF16_CAPABILITY else torch.float16
    return torch.float16 if facts.type == "mps" else torch.float32


def flash_attention_problem(facts: DeviceFacts, dtype) -> str | None:
    """Why flash_attention_2 cannot run here, or None if it can."""
    import torch

    if facts.type != "cuda":
        return f"flash_attention_2 needs a CUDA GPU (compute capability 8.0+) and the flash-attn package (this is {facts.type})"
    if not facts.capability or tuple(facts.capability) < FLASH_CAPABILITY:
        cap = ".".join(map(str, facts.capability)) if facts.capability else "unknown"
        return f"flash_attention_2 needs compute capability 8.0 or newer (this GPU has {cap})"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"flash_attention_2 runs in float16 or bfloat16 only (dtype here: {str(dtype).replace('torch.', '')})"
    if not facts.flash_attn_installed:
        return "flash_attention_2 needs the flash-attn package (pip install flash-attn --no-build-isolation)"
    return None


def attention_for(attn: str | None, facts: DeviceFacts, dtype, sdpa_ok: bool = True,
                  flex_ok: bool = True) -> tuple[str, str]:
    """The attention backend to use and why. 'auto' takes flash_attention_2 where it can run, else sdpa
    (else eager); an explicit backend that cannot run here is a BackendError saying why."""
    from .models import ATTENTION_BACKENDS

    flash_problem = flash_attention_problem(facts, dtype)
    if attn in (None, "auto"):
        if flash_problem is None:
            return "flash_attention_2", "auto: flash_attention_2 (it can run here)"
        fallback = "sdpa" if sdpa_ok else "eager"
        return fallback, f"auto: {fallback}, because {flash_problem}"
    if attn not in ATTENTION_BACKENDS:
        raise BackendError(f"Unknown attention backend {attn!r}. Choose one of: auto, {', '.join(ATTENTION_BACKENDS)}.")
    available = {"eager": True, "sdpa": sdpa_ok, "flex_attention": flex_ok, "flash_attention_2": flash_problem is None}
    if not available[attn]:
        why = flash_problem if attn == "flash_attention_2" else "this torch build does not provide it"
        raise BackendError(f"Attention backend {attn!r} is not available here: {why}. "
                           f"Available: {', '.join(a for a in ATTENTION_BACKENDS if available[a])} (or attn='auto').")
    return attn, f"{attn} (as asked)"


def needed_bytes(weight_bytes: float) -> float:
    """Device memory a model with these weights needs to generate: the weights plus headroom."""
    return weight_bytes * (1 + HEADROOM_FRACTION) + HEADROOM_BYTES


def quant_for(quant: str | None, weight_bytes: Mapping[str | None, float] | Callable[[str | None], float],
              facts: DeviceFacts) -> tuple[str | None, str]:
    """The quantization to use and why. quant='auto' on a GPU takes the first of none, 8-bit, 4-bit
    (bitsandbytes) whose weights plus headroom fit the free memory; on the CPU and MPS it takes none
    (bitsandbytes targets CUDA; host memory is rarely what stops a model there, and quantized CPU kernels
    are slower). `weight_bytes` maps each candidate (None, 'bnb-8bit', 'bnb-4bit') to its estimated bytes
    (memory.estimate), or is a function computing them. Other values pass through unchanged."""
    from .memory import format_bytes

    if quant != "auto":
        return (None if quant in (None, "none") else quant), "as asked"
    if facts.type != "cuda":
        return None, f"auto: no quantization on {facts.type} (bitsandbytes' fast kernels need a CUDA GPU)"
    size = weight_bytes if callable(weight_bytes) else weight_bytes.__getitem__
    free = facts.free_bytes or 0
    tried = []
    for candidate in AUTO_QUANT_ORDER:
        if candidate is not None and not facts.bitsandbytes_installed:
            tried.append(f"{candidate} needs bitsandbytes (pip install 'vlm-course[quant]')")
            continue
        weights = size(candidate)
        label = candidate or "unquantized"
        if needed_bytes(weights) <= free:
            reason = (f"auto: {label}, since its {format_bytes(weights)} of weights (+ headroom: "
                      f"{format_bytes(needed_bytes(weights))}) fit the {format_bytes(free)} free on {facts.name or 'the GPU'}")
            return candidate, "; ".join([*tried, reason])
        tried.append(f"{label} needs {format_bytes(needed_bytes(weights))} with headroom")
    raise BackendError(f"This model does not fit the {format_bytes(free)} free on {facts.name or 'the GPU'}: "
                       + "; ".join(tried) + ". Free memory (restart the kernel, close other models), use a smaller "
                       "model, or load it on the CPU (device='cpu').")
