"""How much memory a model really takes, and how much a configuration would need.

    model_bytes(vlm.model)                       # real bytes of a loaded (maybe quantized) model
    estimate("idefics2-8b", dtype="bfloat16")    # bytes the 8B model needs, without loading it
    estimate_table("idefics2-8b")                # every dtype and quantization side by side

Why not `model.get_memory_footprint()`? It counts `numel * element_size` of each parameter, and
the quantized tensors of optimum-quanto and torchao report their original float dtype, so it
returns the unquantized size. Here we unwrap each quantized tensor into the plain tensors that
really hold its data (and the scales beside it) and add up their storage, each storage once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import BackendError, ModelNotFoundError

DATA_DIR = Path(__file__).parent / "data"
REFERENCE_CONFIGS = {"idefics2-8b": DATA_DIR / "idefics2-8b-config.json",
                     "blip2-opt-2.7b": DATA_DIR / "blip2-opt-2.7b-config.json"}
# Hub ids whose published configuration ships with the package, so estimates need no download.
HUB_REFERENCE_CONFIGS = {"HuggingFaceM4/idefics2-8b": REFERENCE_CONFIGS["idefics2-8b"],
                         "Salesforce/blip2-opt-2.7b": REFERENCE_CONFIGS["blip2-opt-2.7b"]}

# What estimate() accepts besides the method names of models.QUANT_METHODS.
QUANT_ALIASES = {"int8": "bnb-8bit", "nf4": "bnb-4bit", "4bit": "bnb-4bit"}


# ---------------------------------------------------------------- real bytes of a loaded model

def storage_tensors(t: torch.Tensor) -> Iterator[torch.Tensor]:
    """The plain tensors that hold the data of `t`, a plain or quantized tensor.

    optimum-quanto and torchao tensors are wrapper subclasses that list their inner tensors in
    `__tensor_flatten__` (int8 data, scales, shifts, zero points; packed 4-bit data nests once more).
    bitsandbytes keeps the quantized data in the parameter itself and its scales beside it:
    `SCB` (8-bit, one float per row) or `quant_state` (4-bit: absmax per block and the code book).
    """
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None and type(t) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        for name in names:
            yield from storage_tensors(getattr(t, name))
        return
    yield t
    scb = getattr(t, "SCB", None)  # bitsandbytes Int8Params
    if isinstance(scb, torch.Tensor):
        yield scb
    state = getattr(t, "quant_state", None)  # bitsandbytes Params4bit
    while state is not None:
        for name in ("absmax", "code", "offset"):
            value = getattr(state, name, None)
            if isinstance(value, torch.Tensor):
                yield value
        state = getattr(state, "state2", None)  # double quantization nests a second state


def _storage_key_and_bytes(t: torch.Tensor) -> tuple[Any, int]:
    if t.device.type == "meta":  # no storage to share: count the elements
        return id(t), t.numel() * t.element_size()
    storage = t.untyped_storage()
    return (t.device, storage.data_ptr()), storage.nbytes()


def model_bytes(model: torch.nn.Module, by_dtype: bool = False) -> int | dict[str, int]:
    """Real bytes held by a model's parameters and buffers, quantized tensors unwrapped.

    Each storage counts once (tied or shared weights are not counted twice). With by_dtype=True,
    a dict from storage dtype name (int8, uint8, float32, ...) to bytes.
    """
    seen: set = set()
    totals: dict[str, int] = {}
    tensors = [p for _, p in model.named_parameters(remove_duplicate=False)]
    tensors += [b for _, b in model.named_buffers(remove_duplicate=False)]
    for tensor in tensors:
        for leaf in storage_tensors(tensor):
            key, nbytes = _storage_key_and_bytes(leaf)
            if key in seen:
                continue
            seen.add(key)
            name = str(leaf.dtype).replace("torch.", "")
            totals[name] = totals.get(name, 0) + nbytes
    return dict(sorted(totals.items(), key=lambda kv: -kv[1])) if by_dtype else sum(totals.values())


def format_bytes(n: float) -> str:
    """1234567 -> '1.23 MB' (powers of 1000, like the model cards' GB)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


# ---------------------------------------------------------------- estimates from a configuration

def load_config(config: Any):
    """A transformers config from a config object, a model directory, a config.json path, or a name
    ('idefics2-8b' for the reference config shipped with the package, 'tiny' for the bundled model)."""
    from transformers import AutoConfig, PretrainedConfig
    if isinstance(config, PretrainedConfig):
        return config
    if config == "tiny":
        from .models import TINY_MODEL_DIR

        config = TINY_MODEL_DIR
    name = str(config)
    path = REFERENCE_CONFIGS.get(name) or HUB_REFERENCE_CONFIGS.get(name) or Path(name).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        path = _hub_config(name) if _looks_like_hub_id(name) else None
    if path is None:
        raise ModelNotFoundError(f"No configuration at {name!r}. Give a config object, a model directory, "
                                 f"a config.json file, a hub id, 'tiny', or one of: {', '.join(REFERENCE_CONFIGS)}.")
    data = json.loads(path.read_text())
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise ModelNotFoundError(f"{str(path)!r} has no model_type: it is not a transformers config.")
    return AutoConfig.for_model(model_type, **data)


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).expanduser().exists()


def _hub_config(model_id: str) -> Path:
    """The config.json of a hub model: from the local cache, else downloaded (unless HF_HUB_OFFLINE is set)."""
    import os

    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(model_id, "config.json", local_files_only=True))
    except Exception:
        pass
    how = (f"download it once with `huggingface-cli download {model_id} config.json` on a machine online, "
           "or pass the model's directory or config.json instead")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ModelNotFoundError(f"The configuration of {model_id!r} is not in the local cache and HF_HUB_OFFLINE is "
                                 f"set: {how}. Shipped with the package: {', '.join(HUB_REFERENCE_CONFIGS)}.")
    try:
        return Path(hf_hub_download(model_id, "config.json", etag_timeout=10))
    except Exception as e:
        raise ModelNotFoundError(f"Could not get the configuration of {model_id!r} from the hub "
                                 f"({type(e).__name__}: {str(e)[:200]}): check the id and your network, or {how}.") from None


def meta_model(config: Any, dtype: Any = torch.float32):
    """The model a configuration describes, built on the meta device: shapes and dtypes, no memory."""
    from transformers import AutoModelForImageTextToText

    from .models import pick_dtype
    config = load_config(config)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config, dtype=pick_dtype(dtype, torch.device("cpu")))


def _quantized_linear_bytes(quant: str, out_features: int, in_features: int, dtype_bytes: int) -> int:
    """Bytes of one Linear weight after quantization, as each library stores it (measured layouts)."""
    n = out_features * in_features
    if quant == "bnb-8bit":  # int8 weight + one float32 scale per output row (SCB)
        return n + 4 * out_features
    if quant == "bnb-4bit":  # two nf4 values a byte + float32 absmax per block of 64 + 16-entry code book
        return math.ceil(n / 2) + 4 * math.ceil(n / 64) + 16 * 4
    if quant in ("quanto-int8", "quanto-float8"):  # 1 byte a weight + one scale per row, in the model dtype
        return n + out_features * dtype_bytes
    if quant == "quanto-int4":  # 4 bits a weight + scale and shift per group (quanto's group-size rule)
        group = _quanto_group_size(in_features)
        groups = n // group if group else out_features
        return math.ceil(n / 2) + 2 * groups * dtype_bytes
    if quant == "torchao-int8":  # int8 weight + float32 scale + int8 zero point per row
        return n + out_features * (4 + 1)
    raise BackendError(f"No storage layout known for quantization {quant!r}.")


def _quanto_group_size(in_features: int) -> int | None:
    """optimum-quanto's rule (nn/qmodule.py): 128, stepped down by 32 until it divides in_features."""
    group = 128
    if in_features <= group:
        return None
    while in_features % group and group > 32:
        group -= 32
    return group if in_features % group == 0 else None


@dataclass
class Estimate:
    """Bytes a configuration needs for its weights (and buffers), by part of the model."""

    name: str
    dtype: str
    quant: str | None
    parameters: int
    bytes: int
    parts: dict[str, int] = field(default_factory=dict)  # bytes of vision, connector, text, lm_head, buffers

    @property
    def label(self) -> str:
        return self.quant or self.dtype

    def __str__(self) -> str:
        return f"{self.name} {self.label}: {self.parameters:,} parameters, {format_bytes(self.bytes)}"


def _part(name: str) -> str:
    for part in ("vision", "connector", "text", "lm_head"):
        if part in name:
            return part
    return "other"


def estimate(config: Any = "tiny", dtype: Any = "float32", quant: str | None = None) -> Estimate:
    """Bytes the weights of a configuration need in `dtype`, optionally quantized like load_vlm(quant=...).

    Built on the meta device (no memory used, well under a second even for 8B parameters). The
    quantization methods quantize every nn.Linear except the output layer (lm_head), as transformers
    does for bitsandbytes, optimum-quanto and torchao; everything else stays in `dtype`.
    """
    from .models import QUANT_METHODS, pick_dtype

    quant = QUANT_ALIASES.get(quant, quant) if quant not in (None, "none") else None
    if quant is not None and quant not in QUANT_METHODS:
        raise BackendError(f"Unknown quantization {quant!r}. Choose one of: {', '.join(QUANT_METHODS)} "
                           f"(or {', '.join(QUANT_ALIASES)}).")
    torch_dtype = pick_dtype(dtype, torch.device("cpu"))
    cfg = load_config(config)
    model = meta_model(cfg, torch_dtype)
    skip = model.get_output_embeddings()
    quantized = {id(m.weight): m for m in model.modules()
                 if quant and isinstance(m, torch.nn.Linear) and m is not skip}
    parts: dict[str, int] = {}
    seen: set[int] = set()
    parameters = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:  # tied weights share one tensor
            continue
        seen.add(id(p))
        parameters += p.numel()
        if id(p) in quantized:
            nbytes = _quantized_linear_bytes(quant, p.shape[0], p.shape[1], torch_dtype.itemsize)
        else:
            nbytes = p.numel() * p.element_size()
        parts[_part(name)] = parts.get(_part(name), 0) + nbytes
    buffers = sum(b.numel() * b.element_size() for _, b in model.named_buffers())
    if buffers:
        parts["buffers"] = buffers
    name = getattr(cfg, "_name_or_path", "") or "model"
    if isinstance(config, (str, Path)):
        known = str(config) in REFERENCE_CONFIGS or str(config) in HUB_REFERENCE_CONFIGS or config == "tiny"
        name = str(config) if known or _looks_like_hub_id(str(config)) else Path(str(config)).name
    return Estimate(name, str(torch_dtype).replace("torch.", ""), quant, parameters, sum(parts.values()), parts)


# The variants of the memory lesson: (dtype, quant). Quantized models keep their other layers in bf16
# except where a library needs float32 on the CPU; the estimate takes the dtype as given.
VARIANTS = [("float32", None), ("bfloat16", None), ("float16", None),
            ("bfloat16", "bnb-8bit"), ("bfloat16", "bnb-4bit"),
            ("bfloat16", "quanto-int8"), ("bfloat16", "quanto-int4"), ("bfloat16", "quanto-float8"),
            ("bfloat16", "torchao-int8")]


def estimate_table(config: Any = "idefics2-8b", variants=VARIANTS) -> list[Estimate]:
    """estimate() for each (dtype, quant) variant, in order."""
    return [estimate(config, dtype=d, quant=q) for d, q in variants]


def format_table(estimates: list[Estimate]) -> str:
    """A plain-text table of estimates: variant, bytes, GB, share of the first row."""
    base = estimates[0].bytes
    lines = [f"{'variant':<16}{'dtype':<10}{'bytes':>16}{'size':>11}{'vs first':>10}"]
    for e in estimates:
        lines.append(f"{e.label:<16}{e.dtype:<10}{e.bytes:>16,}{format_bytes(e.bytes):>11}{e.bytes / base:>10.0%}")
    return "\n".join(lines)


def kv_cache_bytes_per_token(config: Any = "idefics2-8b", dtype: Any = "bfloat16") -> int:
    """Bytes the KV cache grows by for each token of context: keys and values, every text layer."""
    from .models import pick_dtype

    text = load_config(config).text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * pick_dtype(dtype, torch.device("cpu")).itemsize
