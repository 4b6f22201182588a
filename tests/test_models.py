"""load_vlm: the bundled tiny Idefics2 by default, any directory, clear errors for the rest."""

from __future__ import annotations

import shutil
import socket

import pytest
import torch

from vlm_course.chat import generate, user
from vlm_course.errors import BackendError, MissingExtraError, ModelNotFoundError, VLMCourseError
from vlm_course.models import TINY_MODEL_DIR, load_vlm, pick_dtype
from vlm_course.shapes import random_scene


def test_default_is_the_bundled_tiny_idefics2(vlm):
    from transformers import Idefics2ForConditionalGeneration, Idefics2Processor

    assert isinstance(vlm.model, Idefics2ForConditionalGeneration)
    assert isinstance(vlm.processor, Idefics2Processor)
    assert vlm.name == "tiny-idefics2" and vlm.device.type == "cpu" and vlm.dtype == torch.float32
    # the processor expands each image into as many tokens as the perceiver has latents
    assert vlm.processor.image_seq_len == vlm.model.config.perceiver_config.resampler_n_latents
    assert vlm.processor.image_processor.do_image_splitting is False


def test_the_tiny_model_is_an_ordinary_model_directory():
    from transformers import AutoModelForImageTextToText, AutoProcessor

    for name in ("config.json", "generation_config.json", "processor_config.json", "chat_template.jinja",
                 "tokenizer.json", "model.safetensors", "README.md"):
        assert (TINY_MODEL_DIR / name).is_file(), name
    model = AutoModelForImageTextToText.from_pretrained(TINY_MODEL_DIR)
    processor = AutoProcessor.from_pretrained(TINY_MODEL_DIR)
    assert type(model).__name__ == "Idefics2ForConditionalGeneration"
    tokenizer = processor.tokenizer
    for token in ("<image>", "<fake_token_around_image>", "<end_of_utterance>"):
        ids = tokenizer(token, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id, token  # one special token, not pieces


def test_generation_stops_at_end_of_utterance(vlm):
    reply = generate(vlm, [user(random_scene(1).draw(), "What do we see in this image?")], max_new_tokens=60)
    end = vlm.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    assert reply.finish_reason == "stop"
    assert reply.token_ids[-1] == end and reply.usage.completion_tokens < 60
    assert "<end_of_utterance>" not in reply.text


def test_environment_variable_chooses_the_model(tmp_path, monkeypatch):
    copy = tmp_path / "my-model"
    shutil.copytree(TINY_MODEL_DIR, copy)
    monkeypatch.setenv("VLM_COURSE_MODEL", str(copy))
    vlm = load_vlm()
    assert vlm.name == str(copy)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_vlm(tmp_path / "nowhere")


def test_unreachable_hub_id_fails_fast_and_says_what_to_do(monkeypatch):
    """Offline, the error comes before any connection is tried: no stack of HTTP retries."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    connections = []

    def refuse(sock, address):
        connections.append(address)
        raise OSError("the test allows no connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    with pytest.raises(ModelNotFoundError) as info:
        load_vlm("HuggingFaceM4/idefics2-8b")
    assert connections == []
    message = str(info.value)
    assert "idefics2-8b" in message and "bundled tiny model" in message


@pytest.mark.parametrize("kwargs, fragment", [
    ({"attn": "flash_attention_3"}, "Unknown attention backend"),
    ({"attn": "flash_attention_2"}, "flash-attn"),
    ({"dtype": "float8"}, "Unknown dtype"),
    ({"device": "tpu:0"}, "Unknown device 'tpu:0'"),
])
def test_bad_options_are_clear_errors(kwargs, fragment):
    with pytest.raises(VLMCourseError, match=fragment):
        load_vlm(**kwargs)


def test_dtype_names():
    cpu = torch.device("cpu")
    assert pick_dtype("auto", cpu) == torch.float32
    assert pick_dtype("bf16", cpu) == torch.bfloat16
    assert pick_dtype(torch.float16, cpu) == torch.float16
    with pytest.raises(BackendError):
        pick_dtype("int3", cpu)


def test_a_directory_with_damaged_weights_is_a_clear_error(tmp_path):
    copy = tmp_path / "damaged"
    shutil.copytree(TINY_MODEL_DIR, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a download cut short
    with pytest.raises(ModelNotFoundError, match="could not be read.*damaged or incomplete"):
        load_vlm(copy, device="cpu")


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps"])
def test_a_device_this_machine_lacks_is_refused_before_loading(device, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(BackendError, match=f"Device '{device}' was asked for.*device='cpu'"):
        load_vlm(device=device)


@pytest.mark.parametrize("quant, package", [("bnb-4bit", "bitsandbytes"), ("quanto-int8", "optimum.quanto"),
                                            ("torchao-int8", "torchao")])
def test_a_missing_quantization_package_names_the_extra(quant, package, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'vlm-course\[quant\]'"):
        load_vlm(quant=quant, device="cpu")


def test_an_import_error_inside_transformers_is_a_backend_error(monkeypatch):
    """flash_attention_2 said available (as on a GPU with a broken flash-attn): transformers' real ImportError."""
    import vlm_course.models as models

    monkeypatch.setattr(models, "_attention_and_reason", lambda attn, device, dtype: ("flash_attention_2", "the test"))
    with pytest.raises(BackendError, match="Could not load .* attn='flash_attention_2'.*FlashAttention2"):
        load_vlm(attn="flash_attention_2", device="cpu")
