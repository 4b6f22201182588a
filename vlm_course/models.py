"""Load a vision-language model and its processor: the bundled tiny Idefics2 by default.

One loader for every model: `load_vlm()` gives the tiny model shipped with the package,
`load_vlm("HuggingFaceM4/idefics2-8b")` (or VLM_COURSE_MODEL=...) the real one on a GPU. Nothing
downstream forks on which one it got.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BackendError, ModelNotFoundError, missing_extra
from .quiet import short_bars

TINY_MODEL_DIR = Path(__file__).parent / "tiny" / "model"
TINY_BLIP2_DIR = Path(__file__).parent / "tiny_blip2" / "model"
# Names of the bundled models: load_vlm("tiny-blip2") and load_vlm("tiny-idefics2") need no path.
TINY_MODELS = {"tiny-idefics2": TINY_MODEL_DIR, "tiny-blip2": TINY_BLIP2_DIR}
MODEL_ENV = "VLM_COURSE_MODEL"
IDEFICS2_8B = "HuggingFaceM4/idefics2-8b"
ATTENTION_BACKENDS = ("eager", "sdpa", "flex_attention", "flash_attention_2")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class VLM:
    """A loaded model with everything needed to talk to it."""

    model: Any
    processor: Any
    name: str
    device: Any
    dtype: Any
    attn: str
    quant: str | None = None
    load_seconds: float = 0.0
    notes: tuple[str, ...] = ()  # why load_vlm chose this dtype, attention and quantization (vlm_course.fit)
    adapter: str | None = None  # a peft adapter directory attached on top of the model (lesson 09)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def __repr__(self) -> str:
        quant = f", quant={self.quant}" if self.quant else ""
        adapter = f", adapter={self.adapter!r}" if self.adapter else ""
        return f"VLM({self.name!r}, device={self.device}, dtype={self.dtype}, attn={self.attn}{quant}{adapter})"


def is_tiny(vlm: VLM) -> bool:
    """Is this the bundled tiny model? Only its answers about the shapes world can be checked word for word."""
    return vlm.name == "tiny-idefics2"


def default_model_id() -> str:
    """VLM_COURSE_MODEL if set, otherwise the bundled tiny model's directory."""
    return os.environ.get(MODEL_ENV) or str(TINY_MODEL_DIR)


def pick_device(device: str | None = None):
    """cuda > mps > cpu unless a device is given."""
    import torch

    if device:
        try:
            chosen = torch.device(device)
        except RuntimeError as e:
            raise BackendError(f"Unknown device {device!r} ({e}). Use 'cpu', 'cuda', 'cuda:0' or 'mps'.") from None
        _check_device_exists(chosen)
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _check_device_exists(device) -> None:
    """Refuse a device this machine lacks before loading anything (torch would fail later, inside .to())."""
    import torch

    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"Device {str(device)!r} was asked for, but this machine has no CUDA GPU that torch can use "
                           f"(torch {torch.__version__}). Use device='cpu', or device=None to pick the best one here.")
    mps = getattr(torch.backends, "mps", None)
    if device.type == "mps" and not (mps and mps.is_available()):
        raise BackendError("Device 'mps' was asked for, but Apple's Metal backend is not available here. "
                           "Use device='cpu', or device=None to pick the best one here.")


def pick_dtype(dtype: Any, device, capability: tuple[int, int] | None = None) -> Any:
    """'auto': bfloat16 on a GPU that runs it natively (compute capability >= 8.0), float16 on older GPUs
    and MPS, float32 on the CPU. `capability` defaults to the device's own (see vlm_course.fit.dtype_for)."""
    import torch

    from .fit import DeviceFacts, dtype_for

    if dtype is None or dtype == "auto":
        if device.type == "cuda" and capability is None:
            capability = tuple(torch.cuda.get_device_capability(device))
        return dtype_for(DeviceFacts(device.type, capability))
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in DTYPES or dtype in ("fp32", "bf16", "fp16"):
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype) or getattr(torch, dtype)
    raise BackendError(f"Unknown dtype {dtype!r}. Use 'auto', 'float32', 'bfloat16' or 'float16'.")


def available_attention(device, dtype=None) -> list[str]:
    """Attention backends that can run here (in `dtype`, default: what dtype 'auto' picks), best first."""
    from .fit import device_facts, dtype_for, flash_attention_problem

    found = []
    if device.type == "cuda":
        facts = device_facts(device)
        if flash_attention_problem(facts, dtype or dtype_for(facts)) is None:
            found.append("flash_attention_2")
    found.append("sdpa")
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is not None:  # a submodule: not an attribute until imported
        found.append("flex_attention")
    found.append("eager")
    return found


def resolve_attention(attn: str | None, device, dtype=None) -> str:
    """'auto' picks the best available backend; an explicit one that cannot run here is an error saying why."""
    return _attention_and_reason(attn, device, dtype)[0]


def _attention_and_reason(attn: str | None, device, dtype) -> tuple[str, str]:
    from .fit import DeviceFacts, attention_for, device_facts, dtype_for

    facts = device_facts(device) if device.type == "cuda" else DeviceFacts(device.type)
    available = available_attention(device, dtype)
    return attention_for(attn, facts, dtype or dtype_for(facts), sdpa_ok="sdpa" in available,
                         flex_ok="flex_attention" in available)


# name -> (package to import, extra, builder of the transformers quantization config)
QUANT_METHODS = ("bnb-8bit", "bnb-4bit", "quanto-int8", "quanto-int4", "quanto-float8", "torchao-int8")


def quantization_config(quant: str | None, dtype=None):
    """The transformers quantization config for a method name (see QUANT_METHODS), or None."""
    if quant in (None, "none"):
        return None
    if quant not in QUANT_METHODS:
        raise BackendError(f"Unknown quantization {quant!r}. Choose one of: {', '.join(QUANT_METHODS)}.")
    if quant.startswith("bnb"):
        if importlib.util.find_spec("bitsandbytes") is None:
            raise missing_extra("bitsandbytes", "quant")
        from transformers import BitsAndBytesConfig

        if quant == "bnb-8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    if quant.startswith("quanto"):
        if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.quanto") is None:
            raise missing_extra("optimum-quanto", "quant")
        from transformers import QuantoConfig

        return QuantoConfig(weights=quant.split("-")[1])
    if importlib.util.find_spec("torchao") is None:
        raise missing_extra("torchao", "quant")
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def _is_local(model_id: str) -> bool:
    """A path (it exists, or looks like one) rather than a hub id of the form 'name' or 'org/name'."""
    return Path(model_id).expanduser().exists() or model_id.startswith((".", "/", "~")) or model_id.count("/") > 1


def _check_reachable(model_id: str) -> None:
    """Fail fast with a clear message when a hub id is neither cached nor downloadable."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(model_id, local_files_only=True, allow_patterns=["config.json"])
        return  # cached
    except Exception:
        pass
    hint = (f"Use the bundled tiny model instead: load_vlm() with no model id (and unset {MODEL_ENV}), "
            "or pass a local directory that holds a saved model.")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ModelNotFoundError(f"Model {model_id!r} is not in the local cache and HF_HUB_OFFLINE is set, "
                                 f"so it cannot be downloaded. {hint}")
    from huggingface_hub import model_info

    try:
        model_info(model_id, timeout=10)
    except Exception as e:
        raise ModelNotFoundError(f"Model {model_id!r} could not be found or reached on the Hugging Face hub "
                                 f"({type(e).__name__}: {str(e)[:200]}). Check the id and your network. {hint}") from None


def load_vlm(model_id: str | os.PathLike | None = None, *, dtype: Any = "auto", attn: str | None = "auto",
             quant: str | None = None, device: str | None = None, adapter: str | os.PathLike | None = None) -> VLM:
    """Load a model and its processor.

    model_id: a local directory or a hub id; default: VLM_COURSE_MODEL, else the bundled tiny model.
    dtype: 'auto' (bf16 on GPU, fp32 on CPU), 'float32', 'bfloat16', 'float16' or a torch dtype.
    attn: 'auto' or one of ATTENTION_BACKENDS.
    quant: None, one of QUANT_METHODS, or 'auto' (on a GPU: none, 8-bit or 4-bit, whichever fits the free
    memory by memory.estimate; see vlm_course.fit). The reason for each choice is in the VLM's notes.
    device: None for cuda > mps > cpu, or e.g. 'cpu'.
    adapter: a peft adapter directory (vlm-course finetune) to put on top of the model, unmerged.
    """
    from safetensors import SafetensorError

    from transformers import AutoModelForImageTextToText, AutoProcessor  # torchao's import noise: quiet.NOISE

    start = time.perf_counter()
    model_id = str(model_id or default_model_id())
    model_id = str(TINY_MODELS.get(model_id, model_id))
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    attn_impl, attn_reason = _attention_and_reason(attn, dev, torch_dtype)
    notes = [f"dtype {str(torch_dtype).replace('torch.', '')}" + (" (auto)" if dtype in (None, "auto") else ""),
             f"attention {attn_reason}"]
    quant = None if quant in (None, "", "none") else quant
    if quant == "auto":
        quant, why = _auto_quant(model_id, dev, torch_dtype)
        notes.append(f"quantization {why}")
    quant_config = quantization_config(quant, torch_dtype)
    if _is_local(model_id):
        path = Path(model_id).expanduser()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"No model found at {str(path)!r}: the directory is missing or has no "
                                     "config.json. Give a directory written by save_pretrained, a hub id, or "
                                     "nothing for the bundled tiny model.")
        model_id = str(path)
    else:
        _check_reachable(model_id)
    kwargs = from_pretrained_kwargs(dev, torch_dtype, attn_impl, quant_config)
    try:
        processor = AutoProcessor.from_pretrained(model_id)
        with short_bars():  # no "Loading weights" bar for a load under a second
            model = AutoModelForImageTextToText.from_pretrained(model_id, **kwargs)
    except OSError as e:
        raise ModelNotFoundError(f"Could not load {model_id!r}: {e}") from None
    except SafetensorError as e:  # not an OSError: a truncated or damaged weights file
        raise ModelNotFoundError(f"The weights of {model_id!r} could not be read ({e}): the file is damaged or "
                                 "incomplete. Save or download the model again.") from None
    except ImportError as e:
        raise BackendError(f"Could not load {model_id!r} with attn={attn_impl!r}, quant={quant!r}: {e}") from None
    if "device_map" not in kwargs:
        model.to(dev)
    if quant == "bnb-4bit" and dev.type == "cpu":
        _keep_bnb_cpu_scales(model)
    if adapter is not None:
        from .finetune import attach_adapter

        model = attach_adapter(model, adapter)
    model.eval()
    name = next((tiny for tiny, path in TINY_MODELS.items() if model_id.startswith(str(path))), model_id)
    return VLM(model, processor, name=name,
               device=dev, dtype=torch_dtype, attn=attn_impl, quant=quant,
               load_seconds=time.perf_counter() - start, notes=tuple(notes),
               adapter=None if adapter is None else str(adapter))


def from_pretrained_kwargs(device, dtype, attn: str, quant_config=None) -> dict:
    """What load_vlm passes to from_pretrained. On a GPU (or when quantizing) a device_map sends each weight
    straight to the device as it is read: without one, all of idefics2-8b (16.8 GB in bf16) would first fill
    host RAM, more than Colab's 12.7 GB."""
    kwargs: dict[str, Any] = dict(dtype=dtype, attn_implementation=attn)
    if quant_config is not None:
        kwargs["quantization_config"] = quant_config
    if quant_config is not None or device.type == "cuda":
        kwargs["device_map"] = str(device)
    return kwargs


def _auto_quant(model_id: str, device, dtype) -> tuple[str | None, str]:
    """quant='auto': estimate the weights unquantized, 8-bit and 4-bit, and take the first that fits."""
    from .fit import DeviceFacts, device_facts, quant_for
    from .memory import estimate

    if device.type != "cuda":
        return quant_for("auto", {}, DeviceFacts(device.type))
    return quant_for("auto", lambda q: estimate(model_id, dtype=dtype, quant=q).bytes, device_facts(device))


# bitsandbytes 4-bit on the CPU repacks each weight for its CPU kernel at the first forward pass, and casts the
# absmax scales to bf16 in a transposed layout; its inverse at save time restores the weights exactly but not
# the scales, so a model saved after use reloaded with other answers (36 scale tensors of the tiny model).
# load_vlm keeps the original float32 scales; save_vlm undoes the packing and puts them back first.
_BNB_ORIGINAL_ABSMAX = "_vlm_course_original_absmax"


def _bnb_4bit_weights(model):
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if type(weight).__name__ == "Params4bit" and getattr(weight, "quant_state", None) is not None:
            yield weight


def _keep_bnb_cpu_scales(model) -> None:
    for weight in _bnb_4bit_weights(model):
        setattr(weight, _BNB_ORIGINAL_ABSMAX, weight.quant_state.absmax.detach().clone())


def _restore_bnb_cpu_scales(model) -> None:
    for weight in _bnb_4bit_weights(model):
        original = getattr(weight, _BNB_ORIGINAL_ABSMAX, None)
        if original is None or not getattr(weight.quant_state, "packing_format_for_cpu", False):
            continue
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
        weight.quant_state.absmax = original.clone()  # the next forward pass repacks from these, as the first did


def save_vlm(vlm: VLM, directory: str | os.PathLike) -> Path:
    """Save model and processor with save_pretrained, so that load_vlm(directory) reloads them.

    bitsandbytes and torchao models save quantized and reload quantized. optimum-quanto models cannot
    be saved through transformers (it refuses them): save the unquantized model and quantize on load.
    """
    path = Path(directory).expanduser()
    if vlm.quant and vlm.quant.startswith("quanto"):
        raise BackendError(f"A model quantized with optimum-quanto ({vlm.quant}) cannot be saved with save_pretrained: "
                           "transformers refuses to serialize quanto weights. Save the unquantized model instead and "
                           f"load it with load_vlm(path, quant={vlm.quant!r}), or use bnb-8bit, bnb-4bit or torchao-int8, "
                           "which save and reload.")
    _restore_bnb_cpu_scales(vlm.model)
    try:
        with short_bars():  # no "Writing model shards" bar for a save under a second
            vlm.model.save_pretrained(path)
    except (ValueError, NotImplementedError) as e:
        raise BackendError(f"This model (quant={vlm.quant!r}) cannot be saved: {e}") from None
    vlm.processor.save_pretrained(path)
    return path
