"""The loader's decisions for a device (vlm_course.fit), with the facts of real GPUs passed in: a CPU tests
what a T4, an A100 or an H100 would get."""

from __future__ import annotations

import pytest
import torch

from vlm_course.errors import BackendError
from vlm_course.fit import DeviceFacts, attention_for, dtype_for, needed_bytes, quant_for
from vlm_course.memory import estimate

GB = 1e9
T4 = DeviceFacts("cuda", (7, 5), free_bytes=int(14.7 * GB), total_bytes=int(15.8 * GB), flash_attn_installed=True,
                 bitsandbytes_installed=True, name="Tesla T4")
A100_40 = DeviceFacts("cuda", (8, 0), free_bytes=int(39 * GB), flash_attn_installed=True, bitsandbytes_installed=True)
H100 = DeviceFacts("cuda", (9, 0), free_bytes=int(79 * GB), flash_attn_installed=False, bitsandbytes_installed=True)
CPU = DeviceFacts("cpu", free_bytes=int(20 * GB))


def test_bf16_only_where_it_runs_natively():
    assert dtype_for(T4) == torch.float16  # torch.cuda.is_bf16_supported() says True here (emulation)
    assert dtype_for(A100_40) == torch.bfloat16 and dtype_for(H100) == torch.bfloat16
    assert dtype_for(CPU) == torch.float32 and dtype_for(DeviceFacts("mps")) == torch.float16


def test_pick_dtype_uses_the_capability():
    from vlm_course.models import pick_dtype

    cuda = torch.device("cuda")
    assert pick_dtype("auto", cuda, capability=(7, 5)) == torch.float16
    assert pick_dtype("auto", cuda, capability=(8, 6)) == torch.bfloat16
    assert pick_dtype("bf16", cuda, capability=(7, 5)) == torch.bfloat16  # asked for: given


def test_auto_attention_takes_flash_only_where_it_can_run():
    assert attention_for("auto", A100_40, torch.bfloat16) == ("flash_attention_2", "auto: flash_attention_2 (it can run here)")
    cases = [(T4, torch.float16, "compute capability 8.0"), (A100_40, torch.float32, "float16 or bfloat16"),
             (H100, torch.bfloat16, "flash-attn package"), (CPU, torch.float32, "CUDA GPU")]
    for facts, dtype, why in cases:
        impl, reason = attention_for("auto", facts, dtype)
        assert impl == "sdpa" and why in reason, (facts, reason)
    assert attention_for("auto", CPU, torch.float32, sdpa_ok=False)[0] == "eager"


def test_explicit_flash_attention_that_cannot_run_says_why():
    with pytest.raises(BackendError, match="compute capability 8.0.*7.5"):
        attention_for("flash_attention_2", T4, torch.float16)
    assert attention_for("eager", T4, torch.float16)[0] == "eager"
    with pytest.raises(BackendError, match="Unknown attention"):
        attention_for("flash", T4, torch.float16)


def _idefics2_8b(quant):
    return estimate("HuggingFaceM4/idefics2-8b", dtype="float16", quant=quant).bytes


def test_auto_quantization_fits_the_free_memory():
    # idefics2-8b on a T4: 16.8 GB of fp16 weights do not fit 14.7 GB; 8-bit (8.9 GB) does.
    quant, reason = quant_for("auto", _idefics2_8b, T4)
    assert quant == "bnb-8bit" and "unquantized needs" in reason and "Tesla T4" in reason
    assert quant_for("auto", _idefics2_8b, A100_40)[0] is None
    small = DeviceFacts("cuda", (8, 6), free_bytes=int(10 * GB), bitsandbytes_installed=True)
    assert quant_for("auto", _idefics2_8b, small)[0] == "bnb-4bit"
    with pytest.raises(BackendError, match="does not fit"):
        quant_for("auto", _idefics2_8b, DeviceFacts("cuda", (8, 6), free_bytes=int(4 * GB), bitsandbytes_installed=True))
    no_bnb = DeviceFacts("cuda", (7, 5), free_bytes=T4.free_bytes)
    with pytest.raises(BackendError, match="needs bitsandbytes"):
        quant_for("auto", _idefics2_8b, no_bnb)


def test_auto_quantization_decides_from_estimates_and_headroom():
    sizes = {None: 10 * GB, "bnb-8bit": 5 * GB, "bnb-4bit": 3 * GB}
    just = DeviceFacts("cuda", (8, 0), free_bytes=int(needed_bytes(10 * GB)), bitsandbytes_installed=True)
    assert quant_for("auto", sizes, just)[0] is None
    short = DeviceFacts("cuda", (8, 0), free_bytes=int(needed_bytes(10 * GB)) - 1, bitsandbytes_installed=True)
    assert quant_for("auto", sizes, short)[0] == "bnb-8bit"
    assert quant_for("auto", sizes, CPU) == (None, "auto: no quantization on cpu (bitsandbytes' fast kernels need a CUDA GPU)")
    assert quant_for("bnb-4bit", sizes, CPU) == ("bnb-4bit", "as asked")
    assert quant_for("none", sizes, T4)[0] is None


def test_load_vlm_says_what_it_chose(test_model_dir):
    from vlm_course.models import load_vlm

    vlm = load_vlm(test_model_dir, device="cpu", quant="auto")
    assert vlm.quant is None
    notes = " | ".join(vlm.notes)
    assert "dtype float32 (auto)" in notes and "attention auto: sdpa, because flash_attention_2 needs a CUDA GPU" in notes, notes
    assert "quantization auto: no quantization on cpu" in notes


def test_weights_go_straight_to_the_gpu():
    from vlm_course.models import from_pretrained_kwargs

    on_gpu = from_pretrained_kwargs(torch.device("cuda:0"), torch.float16, "sdpa")
    assert on_gpu["device_map"] == "cuda:0" and on_gpu["dtype"] == torch.float16
    assert "device_map" not in from_pretrained_kwargs(torch.device("cpu"), torch.float32, "sdpa")
