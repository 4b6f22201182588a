"""The idefics2-8b-shaped test model (vlm_course.testmodel), and what only a model shaped like the real one
exercises: image splitting, native aspect ratios, a tokenizer with BOS, special tokens at the end of the vocabulary."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlm_course.chat import count_tokens, generate, generate_batch, prepare, stream, user
from vlm_course.errors import VLMCourseError
from vlm_course.shapes import random_scene
from vlm_course.testmodel import LIKE

QUESTIONS = ["What do we see in this image?", "How many shapes are there?", "What colour is the circle?",
             "Is there a square?", "Describe the image."]


def test_config_keeps_what_the_real_model_fixes(test_model_dir):
    config = json.loads((test_model_dir / "config.json").read_text())
    real = json.loads(LIKE["idefics2-8b"].read_text())
    for key in ("patch_size", "image_size"):
        assert config["vision_config"][key] == real["vision_config"][key]
    assert config["perceiver_config"]["resampler_n_latents"] == 64
    assert config["text_config"]["model_type"] == "mistral"
    processor = json.loads((test_model_dir / "processor_config.json").read_text())
    image_processor = processor.get("image_processor", processor)
    assert image_processor["do_image_splitting"] is True
    assert image_processor["size"] == {"longest_edge": 980, "shortest_edge": 378}


def test_tokenizer_is_llama_style_with_bos_and_special_tokens_last(test_vlm):
    tok = test_vlm.tokenizer
    assert type(tok).__name__ == "LlamaTokenizer"
    ids = tok("a red circle").input_ids
    assert ids[0] == tok.bos_token_id == 1
    assert tok.decode(ids, skip_special_tokens=True) == "a red circle"
    # byte fallback: text the pieces never saw still round-trips
    assert tok.decode(tok("Größe 🙂").input_ids, skip_special_tokens=True) == "Größe 🙂"
    specials = tok.convert_tokens_to_ids(["<fake_token_around_image>", "<image>", "<end_of_utterance>"])
    assert specials == [len(tok) - 3, len(tok) - 2, len(tok) - 1]
    assert test_vlm.model.config.image_token_id == specials[1]
    prompt = prepare(test_vlm, [[user("Hello")]])["input_ids"][0].tolist()
    assert prompt[0] == tok.bos_token_id and prompt.count(tok.bos_token_id) == 1


def test_an_image_costs_320_tokens_with_splitting_and_64_without(test_vlm):
    from vlm_course.chat import splitting_processor

    messages = [user(random_scene(0).draw(), "What do we see in this image?")]
    on = count_tokens(test_vlm, messages)
    assert on["image_splitting"] and on["image_tokens"] == 320 and on["pixel_values_shape"][1] == 5
    off_processor = splitting_processor(test_vlm)
    off_processor.image_processor.do_image_splitting = False
    off = count_tokens(test_vlm, messages, processor=off_processor)
    assert off["image_tokens"] == 64 and off["pixel_values_shape"][1] == 1


def test_native_aspect_ratio_is_kept(test_vlm):
    inputs = prepare(test_vlm, [[user(Image.new("RGB", (640, 480), "white"), "What?")]])
    pixel_values, mask = inputs["pixel_values"], inputs["pixel_attention_mask"]
    assert tuple(pixel_values.shape) == (1, 5, 3, 480, 640)  # the whole image (last) at its own size
    assert mask[0, 4].all() and not mask[0, 0].all()  # the crops are half the size, padded


def test_replies_vary_and_end_at_end_of_utterance(test_vlm):
    convs = [[user(random_scene(i).draw(), QUESTIONS[i % len(QUESTIONS)])] for i in range(10)]
    replies = generate_batch(test_vlm, convs, max_new_tokens=48)
    end = test_vlm.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    ended = [r for r in replies if r.token_ids and r.token_ids[-1] == end]
    assert len(ended) >= 8, [r.text for r in replies]
    assert len({r.text for r in replies}) >= 5, [r.text for r in replies]


def test_mixed_sizes_and_image_counts_batch_equals_single_in_float32(test_vlm):
    assert test_vlm.dtype == torch.float32
    convs = [[user(random_scene(0).draw(), "What do we see in this image?")],
             [user(Image.new("RGB", (300, 120), "yellow"), random_scene(1).draw(256), "Which is different?")],
             [user(random_scene(2).draw(512).resize((500, 200)), "How many shapes are there?")],
             [user("Say something.")]]
    batched = generate_batch(test_vlm, convs, max_new_tokens=12)
    single = [generate(test_vlm, c, max_new_tokens=12) for c in convs]
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]


def test_stream_equals_generate(test_vlm):
    messages = [user(random_scene(3).draw(), "Describe the image.")]
    reply = generate(test_vlm, messages, max_new_tokens=24)
    assert "".join(stream(test_vlm, messages, max_new_tokens=24)).strip() == reply.text


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1), (2, 2)])
def test_degenerate_images_are_a_clear_error_or_an_answer(test_vlm, size):
    try:
        reply = generate(test_vlm, [user(Image.new("RGB", size, "red"), "What?")], max_new_tokens=4)
    except VLMCourseError as e:
        assert "image" in str(e).lower() and f"{size[0]}x{size[1]}" in str(e)
    else:
        assert reply.usage.completion_tokens >= 1


def test_a_large_image_is_scaled_to_the_longest_edge(test_vlm):
    inputs = prepare(test_vlm, [[user(Image.new("RGB", (4000, 3000), "white"), "What?")]])
    assert max(inputs["pixel_values"].shape[-2:]) == 980


def test_build_test_model_command(tmp_path, capsys):
    from vlm_course.cli import main
    from vlm_course.models import load_vlm

    assert main(["build-test-model", "--like", "idefics2-8b", "--out", str(tmp_path / "m")]) == 0
    assert "VLM_COURSE_MODEL=" in capsys.readouterr().out
    vlm = load_vlm(tmp_path / "m", device="cpu")
    assert vlm.processor.image_processor.do_image_splitting
    assert main(["build-test-model", "--like", "gpt-17", "--out", str(tmp_path / "x")]) == 2


def test_the_server_on_the_test_model(test_vlm):
    """The OpenAI-compatible server answers like chat.generate, and turns a 1x1 image into a 4xx, not a 500."""
    import base64
    import io

    import httpx

    from vlm_course.serve import ServerSettings, start_in_background
    from vlm_course.serve.openai_format import to_openai_messages

    conversation = [user(random_scene(5).draw(), "What do we see in this image?")]
    want = generate(test_vlm, conversation, max_new_tokens=16).text
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), "red").save(buffer, format="PNG")
    tiny_image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    with start_in_background(ServerSettings(max_batch_size=4, max_wait_ms=10), vlm=test_vlm) as server:
        model = httpx.get(server.url + "/v1/models", timeout=30).json()["data"][0]["id"]
        body = {"model": model, "messages": to_openai_messages(conversation), "temperature": 0, "max_tokens": 16}
        r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == want
        bad = {**body, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": tiny_image}},
                                                                 {"type": "text", "text": "What?"}]}]}
        r = httpx.post(server.url + "/v1/chat/completions", json=bad, timeout=60)
        assert 400 <= r.status_code < 500 and "1x1" in r.text, r.text
