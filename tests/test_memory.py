"""model_bytes against hand sums of each library's own storage, and estimate() against measurements."""

from __future__ import annotations

import pytest
import torch

from _need import need  # skips outside CI, fails in CI

from vlm_course.errors import BackendError, ModelNotFoundError
from vlm_course.memory import estimate, estimate_table, load_config, model_bytes
from vlm_course.models import QUANT_METHODS, TINY_MODEL_DIR, load_vlm

IDEFICS2_8B_PARAMETERS = 8_402_768_112  # Idefics2-8b's published config, counted on the meta device


def nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def own_tensors(module):
    return list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))


def hand_sum(model, library_bytes) -> int:
    """Storage bytes of every parameter and buffer, asking `library_bytes(tensor)` for quantized ones."""
    total = 0
    for module in model.modules():
        for _, t in own_tensors(module):
            special = library_bytes(t)
            total += nbytes(t) if special is None else special
    return total


def test_plain_model_bytes_equal_parameter_storage(vlm):
    expected = hand_sum(vlm.model, lambda t: None)
    assert model_bytes(vlm.model) == expected
    assert expected == sum(p.numel() * p.element_size() for p in vlm.model.parameters()) + \
        sum(b.numel() * b.element_size() for b in vlm.model.buffers())


def test_bf16_halves_the_float32_bytes(vlm):
    bf16 = load_vlm(TINY_MODEL_DIR, dtype="bfloat16", device="cpu")
    buffers = sum(nbytes(b) for b in vlm.model.buffers())  # rotary buffers stay float32
    assert model_bytes(bf16.model) - buffers == (model_bytes(vlm.model) - buffers) // 2


def test_tied_storage_counts_once(vlm):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(8, 8, bias=False)
            self.b = torch.nn.Linear(8, 8, bias=False)
            self.b.weight = self.a.weight

    assert model_bytes(Tied()) == 8 * 8 * 4


def bnb_bytes(t):
    import bitsandbytes as bnb

    if isinstance(t, bnb.nn.Int8Params):
        return nbytes(t) + nbytes(t.SCB)
    if isinstance(t, bnb.nn.Params4bit):
        qs = t.quant_state
        return nbytes(t) + nbytes(qs.absmax) + nbytes(qs.code)
    return None


def quanto_bytes(t):
    from optimum.quanto import QBytesTensor
    from optimum.quanto.tensor.weights.qbits import WeightQBitsTensor

    if isinstance(t, WeightQBitsTensor):
        packed = t._data._data if hasattr(t._data, "_data") else t._data
        return nbytes(packed) + nbytes(t._scale) + nbytes(t._shift)
    if isinstance(t, QBytesTensor):
        return nbytes(t._data) + nbytes(t._scale)
    return None


def torchao_bytes(t):
    from torchao.quantization import Int8Tensor

    if isinstance(t, Int8Tensor):
        return nbytes(t.qdata) + nbytes(t.scale) + nbytes(t.zero_point)
    return None


LIBRARY_BYTES = {"bnb": bnb_bytes, "quanto": quanto_bytes, "torchao": torchao_bytes}
LIBRARY_MODULE = {"bnb": "bitsandbytes", "quanto": "optimum.quanto", "torchao": "torchao"}


@pytest.fixture(scope="module")
def fp32_bytes(vlm):
    return model_bytes(vlm.model)


@pytest.mark.parametrize("quant", QUANT_METHODS)
def test_quantized_model_bytes_equal_hand_sum(quant, fp32_bytes):
    library = quant.split("-")[0]
    need(LIBRARY_MODULE[library])
    q = load_vlm(TINY_MODEL_DIR, quant=quant, device="cpu")
    measured = model_bytes(q.model)
    assert measured == hand_sum(q.model, LIBRARY_BYTES[library])
    # Quantization really shrank the model: at most 45% of float32 for 8-bit, 35% for 4-bit.
    assert measured < fp32_bytes * (0.35 if ("4" in quant and "float8" not in quant) else 0.45)
    # ... and the estimate from the config alone agrees within 2%.
    assert estimate("tiny", dtype="float32", quant=quant).bytes == pytest.approx(measured, rel=0.02)


def test_get_memory_footprint_misses_quanto_savings(fp32_bytes):
    """The trap this module exists for: transformers' footprint reports float32 sizes under quanto."""
    need("optimum.quanto")
    q = load_vlm(TINY_MODEL_DIR, quant="quanto-int8", device="cpu")
    assert q.model.get_memory_footprint() >= fp32_bytes
    assert model_bytes(q.model) < fp32_bytes / 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_estimate_matches_the_loaded_tiny_model(dtype):
    loaded = load_vlm(TINY_MODEL_DIR, dtype=dtype, device="cpu")
    e = estimate(TINY_MODEL_DIR, dtype=dtype)
    assert e.parameters == sum(p.numel() for p in loaded.model.parameters())
    assert e.bytes == pytest.approx(model_bytes(loaded.model), rel=0.02)


def test_estimate_of_idefics2_8b_from_the_shipped_config():
    bf16 = estimate("idefics2-8b", dtype="bfloat16")
    assert bf16.parameters == IDEFICS2_8B_PARAMETERS
    assert bf16.bytes - bf16.parts.get("buffers", 0) == 2 * IDEFICS2_8B_PARAMETERS
    assert set(bf16.parts) >= {"vision", "connector", "text", "lm_head"}
    table = {e.label: e.bytes for e in estimate_table("idefics2-8b")}
    assert table["float32"] == pytest.approx(2 * table["bfloat16"], rel=1e-6)
    # 8-bit: about a byte per weight; 4-bit: a little over half a byte (scales, lm_head in bf16).
    assert 0.5 < table["bnb-8bit"] / table["bfloat16"] < 0.55
    assert 0.25 < table["bnb-4bit"] / table["bfloat16"] < 0.32


def test_estimate_accepts_a_config_object_a_directory_and_a_name():
    config = load_config(TINY_MODEL_DIR)
    by_object = estimate(config, dtype="float16")
    by_dir = estimate(str(TINY_MODEL_DIR), dtype="float16")
    by_name = estimate("tiny", dtype="float16")
    assert by_object.bytes == by_dir.bytes == by_name.bytes
    assert estimate("tiny", quant="int8").quant == "bnb-8bit"


def test_estimate_errors_are_clear(tmp_path):
    with pytest.raises(BackendError, match="Choose one of"):
        estimate("tiny", quant="int3")
    with pytest.raises(ModelNotFoundError, match="No configuration"):
        estimate(tmp_path / "nothing-here")


def test_kv_cache_per_token_of_idefics2_8b():
    from vlm_course.memory import kv_cache_bytes_per_token

    # 32 layers x (keys + values) x 8 kv heads x 128 dims x 2 bytes (bf16)
    assert kv_cache_bytes_per_token("idefics2-8b", "bfloat16") == 32 * 2 * 8 * 128 * 2
    assert kv_cache_bytes_per_token("idefics2-8b", "float32") == 2 * kv_cache_bytes_per_token("idefics2-8b", "bfloat16")


def test_estimate_takes_the_hub_id_of_idefics2_8b_without_a_download():
    by_id = estimate("HuggingFaceM4/idefics2-8b", dtype="bfloat16")
    assert by_id.parameters == IDEFICS2_8B_PARAMETERS and by_id.name == "HuggingFaceM4/idefics2-8b"
    assert by_id.bytes == estimate("idefics2-8b", dtype="bfloat16").bytes


def test_estimate_takes_a_model_directory_and_says_how_to_get_an_unknown_hub_config(test_model_dir):
    from vlm_course.models import load_vlm

    loaded = load_vlm(test_model_dir, device="cpu")
    assert estimate(test_model_dir).parameters == sum(p.numel() for p in loaded.model.parameters())
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE.*huggingface-cli download"):
        estimate("someone/not-a-cached-model")
