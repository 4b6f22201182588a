"""Attention backends and quantization methods: what runs here, the same answers, clear errors."""

from __future__ import annotations

import pytest
import torch

from _need import need  # skips outside CI, fails in CI

from vlm_course.chat import generate, user
from vlm_course.errors import BackendError
from vlm_course.models import TINY_MODEL_DIR, available_attention, load_vlm, quantization_config, resolve_attention, save_vlm
from vlm_course.shapes import random_scene

CPU = torch.device("cpu")


def test_auto_picks_the_first_available_backend():
    available = available_attention(CPU)
    assert resolve_attention("auto", CPU) == available[0]
    assert resolve_attention(None, CPU) == available[0]
    assert {"sdpa", "eager"} <= set(available)


def test_flash_attention_on_cpu_is_a_clear_error_with_alternatives():
    with pytest.raises(BackendError) as e:
        resolve_attention("flash_attention_2", CPU)
    assert "CUDA" in str(e.value) and "sdpa" in str(e.value) and "attn='auto'" in str(e.value)
    with pytest.raises(BackendError, match="not available"):
        load_vlm(TINY_MODEL_DIR, attn="flash_attention_2", device="cpu")


def test_unknown_backend_and_quantization_are_clear_errors():
    with pytest.raises(BackendError, match="Choose one of: auto, eager"):
        resolve_attention("flash", CPU)
    with pytest.raises(BackendError, match="Unknown quantization 'int3'"):
        quantization_config("int3")


def answers(vlm, seeds=(0, 1, 2)):
    return [generate(vlm, [user(random_scene(s).draw(), "What do we see in this image?")],
                     max_new_tokens=24).token_ids for s in seeds]


def test_eager_and_sdpa_give_identical_greedy_tokens(vlm):
    eager = load_vlm(TINY_MODEL_DIR, attn="eager", device="cpu")
    sdpa = load_vlm(TINY_MODEL_DIR, attn="sdpa", device="cpu")
    assert (eager.attn, sdpa.attn) == ("eager", "sdpa")
    assert answers(eager) == answers(sdpa)


def test_flex_attention_gives_identical_greedy_tokens():
    flex = load_vlm(TINY_MODEL_DIR, attn="flex_attention", device="cpu")
    sdpa = load_vlm(TINY_MODEL_DIR, attn="sdpa", device="cpu")
    assert answers(flex) == answers(sdpa)


def test_quanto_int4_fails_under_inference_mode_but_the_package_generates():
    need("optimum.quanto")
    q = load_vlm(TINY_MODEL_DIR, quant="quanto-int4", device="cpu")
    inputs = q.processor(text=["User: hi<end_of_utterance>\nAssistant:"], return_tensors="pt")
    with pytest.raises(RuntimeError, match="version_counter|inference"):
        with torch.inference_mode():
            q.model.generate(**inputs, max_new_tokens=2, do_sample=False)
    reply = generate(q, [user(random_scene(0).draw(), "What do we see in this image?")], max_new_tokens=12)
    assert reply.text == random_scene(0).describe() and reply.finish_reason == "stop"  # 4-bit still sees the scene


def test_saving_a_quanto_model_says_what_to_do_instead(tmp_path):
    need("optimum.quanto")
    q = load_vlm(TINY_MODEL_DIR, quant="quanto-int8", device="cpu")
    with pytest.raises(BackendError, match="cannot be saved.*quant='quanto-int8'"):
        save_vlm(q, tmp_path / "q")


@pytest.mark.parametrize("quant", ["bnb-4bit", "torchao-int8"])
def test_bitsandbytes_and_torchao_models_save_and_reload_quantized(quant, tmp_path):
    need("bitsandbytes" if quant.startswith("bnb") else "torchao")
    q = load_vlm(TINY_MODEL_DIR, quant=quant, device="cpu")
    again = load_vlm(save_vlm(q, tmp_path / "m"), device="cpu")
    assert type(again.model.model.text_model.layers[0].mlp.up_proj.weight) is type(q.model.model.text_model.layers[0].mlp.up_proj.weight)
    assert answers(again, seeds=(0,)) == answers(q, seeds=(0,))


def test_bitsandbytes_4bit_saved_after_use_reloads_the_same_answers(tmp_path):
    """On the CPU the first forward pass repacks the 4-bit weights and casts their scales to bf16: saved after
    use, the tiny model reloaded with 1 of 6 answers the same (logits off by 12.9)."""
    need("bitsandbytes")
    q = load_vlm(TINY_MODEL_DIR, quant="bnb-4bit", device="cpu")
    before = answers(q, seeds=range(6))  # use it first
    again = load_vlm(save_vlm(q, tmp_path / "m"), device="cpu")
    assert answers(again, seeds=range(6)) == before
    assert answers(q, seeds=range(6)) == before  # and the saved model still answers as before
