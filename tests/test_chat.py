"""generate and generate_batch on the real tiny Idefics2: answers, decoding, options, batching, the pipeline."""

from __future__ import annotations

import random

import pytest
import torch

from vlm_course.chat import generate, generate_batch, prepare, render_prompt
from vlm_course.chat_bench import bench_conversations
from vlm_course.errors import GenerationError, MessagesError, VLMCourseError
from vlm_course.messages import assistant, user
from vlm_course.shapes import make_sample, random_scene


def test_answers_match_the_scenes(vlm):
    """The bundled model describes scenes correctly (it is trained to ~99%; allow one slip in ten)."""
    right = []
    for seed in range(10):
        scene = random_scene(seed)
        reply = generate(vlm, [user(scene.draw(), "What do we see in this image?")])
        right.append(reply.text == scene.describe())
    assert sum(right) >= 9, right


def test_reply_is_only_the_new_tokens(vlm):
    scene, other = random_scene(11), random_scene(12)
    msgs = [user(scene.draw(), "What do we see in this image?"), assistant(scene.describe()),
            user("And how about this image?", other.draw())]
    reply = generate(vlm, msgs, max_new_tokens=40)
    inputs = prepare(vlm, [msgs])
    assert reply.usage.prompt_tokens == inputs["input_ids"].shape[1]
    assert reply.finish_reason == "stop"
    assert reply.token_ids[-1] == vlm.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    assert reply.usage.completion_tokens == len(reply.token_ids)
    for leak in ("User", "Assistant", "And how about", "What do we see", "<"):
        assert leak not in reply.text
    assert reply.text == vlm.tokenizer.decode(reply.token_ids, skip_special_tokens=True).strip()


def test_trap_decoding_the_whole_output_repeats_the_prompt(vlm):
    """The trap: decode(output) starts with the prompt, and its text is not the template's string
    (image tokens expanded, special tokens skipped), so cutting by string length goes wrong."""
    msgs = [user(random_scene(5).draw(), "What do we see in this image?")]
    inputs = prepare(vlm, [msgs])
    with torch.no_grad():
        output = vlm.model.generate(**inputs, max_new_tokens=20, do_sample=False)
    whole = vlm.tokenizer.decode(output[0], skip_special_tokens=True)
    assert "What do we see in this image?" in whole
    prompt = render_prompt(vlm, msgs)
    assert whole[len(prompt):].strip() != generate(vlm, msgs, max_new_tokens=20).text
    by_count = vlm.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert by_count == generate(vlm, msgs, max_new_tokens=20).text


def test_length_stop_and_options(vlm):
    scene = random_scene(21)
    msgs = [user(scene.draw(), "Describe this image in detail.")]
    short = generate(vlm, msgs, max_new_tokens=2)
    assert short.finish_reason == "length" and short.usage.completion_tokens == 2
    full = generate(vlm, msgs, max_new_tokens=80)
    assert full.finish_reason == "stop"
    assert full.text.count(".") >= 2  # several sentences
    cut = full.text.split(".")[0] + "."
    stopped = generate(vlm, msgs, max_new_tokens=80, stop=full.text[len(cut):len(cut) + 4])
    assert stopped.text == cut.strip() and stopped.finish_reason == "stop"
    assert stopped.usage.completion_tokens < full.usage.completion_tokens


@pytest.mark.parametrize("options, needle", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"stop": [""]}, "stop"),
    ({"max_new_tokens": 4097}, "from 1 to 4096"), ({"max_new_tokens": True}, "max_new_tokens"),
    ({"temperature": 10.5}, "from 0 \\(greedy\\) to 10"), ({"temperature": "hot"}, "temperature"),
    ({"top_p": 1.01}, "top_p must be a number in"), ({"top_p": "all"}, "top_p"),
])
def test_bad_options_are_explained(vlm, options, needle):
    with pytest.raises(GenerationError, match=needle):
        generate(vlm, [user("What do we see in this image?")], **options)


def test_sampling_is_reproducible_with_a_seed(vlm):
    msgs = [user(random_scene(2).draw(), "Describe this image in detail.")]
    a = generate(vlm, msgs, temperature=1.5, seed=7, max_new_tokens=30)
    b = generate(vlm, msgs, temperature=1.5, seed=7, max_new_tokens=30)
    assert a.token_ids == b.token_ids


def test_batch_equals_one_at_a_time(vlm):
    """Left padding, 1 or 2 images per conversation, multi-turn and long answers: the same greedy replies."""
    conversations = bench_conversations(8, seed=3)
    counts = {sum(p["type"] == "image" for m in c for p in m["content"]) for c in conversations}
    assert counts == {1, 2}
    batch = generate_batch(vlm, conversations, max_new_tokens=48)
    singles = [generate(vlm, c, max_new_tokens=48) for c in conversations]
    assert [r.text for r in batch] == [r.text for r in singles]
    assert [r.token_ids for r in batch] == [r.token_ids for r in singles]
    assert [r.usage.prompt_tokens for r in batch] == [r.usage.prompt_tokens for r in singles]


def test_batch_pads_on_the_left(vlm):
    short = [user(random_scene(1).draw(), "What do we see?")]
    long = make_sample("multi_turn", random.Random(1)).prompt
    inputs = prepare(vlm, [short, long])
    mask = inputs["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()
    assert inputs["input_ids"][0, 0] == vlm.tokenizer.pad_token_id


def test_batch_input_mistakes(vlm):
    assert generate_batch(vlm, []) == []
    with pytest.raises(GenerationError, match="list of conversations"):
        generate_batch(vlm, [user("What do we see?")])
    with pytest.raises(MessagesError, match="conversation 1|plain-string"):
        generate_batch(vlm, [[user("What do we see?")], [{"role": "user", "content": "hi"}]])


def test_pipeline_gives_the_same_answer(vlm):
    from transformers import pipeline

    pipe = pipeline("image-text-to-text", model=vlm.model, processor=vlm.processor)
    scene = random_scene(4)
    msgs = [user(scene.draw(), "What do we see in this image?")]
    out = pipe(text=msgs, max_new_tokens=30, return_full_text=False)
    assert out[0]["generated_text"].strip() == generate(vlm, msgs, max_new_tokens=30).text


def test_chat_bench_reports_figures(vlm):
    """The benchmark functions run and check what they compare (no time is asserted)."""
    import matplotlib.pyplot as plt

    from vlm_course.chat_bench import measure_batching, measure_stream_overhead, plot_batching

    b = measure_batching(vlm, n=4, max_new_tokens=16, repeats=1, progress=False)
    assert b["same_replies"] and b["conversations"] == 4 and b["completion_tokens"] > 0
    # What batching buys, counted: one forward pass per token of each reply one by one, and one per step of the
    # longest reply for the whole batch (the timings and their ratio are the benchmark's figures, not asserted).
    assert b["sequential_forward_passes"] == b["completion_tokens"]
    assert b["batch_forward_passes"] == b["longest_reply_tokens"] < b["completion_tokens"]
    assert b["workload"] == "mixed" and b["images"] == [1, 2, 2, 1]
    assert b["preprocess_seconds"] > 0 and b["vision_seconds"] > 0  # the per-image work was timed
    assert 1 <= b["longest_reply_tokens"] <= 16
    fig = plot_batching({"mixed": b})
    assert len(fig.axes) == 2
    plt.close(fig)
    with pytest.raises(VLMCourseError, match="workload"):
        measure_batching(vlm, workload="memes", progress=False)
    s = measure_stream_overhead(vlm, max_new_tokens=16, repeats=1, progress=False)
    assert s["same_text"] and s["completion_tokens"] > 0 and s["stream_time_to_first_token"] > 0


def test_a_near_zero_temperature_is_greedy_not_an_overflow(vlm):
    from vlm_course.chat import generate, user
    from vlm_course.shapes import random_scene

    messages = [user(random_scene(3).draw(), "What do we see in this image?")]
    assert generate(vlm, messages, temperature=2e-311).text == generate(vlm, messages).text


def _failing_model(vlm):
    """A real failure inside the model's forward pass (as out-of-memory would be), injected with a hook."""
    def fail(module, args, output):
        raise RuntimeError("CUDA out of memory (injected by the test)")
    return vlm.model.register_forward_hook(fail)


@pytest.mark.parametrize("batched", [False, True])
def test_a_model_failure_is_a_generation_error_with_its_cause(vlm, batched):
    conversation = [user(random_scene(2).draw(), "What do we see in this image?")]
    hook = _failing_model(vlm)
    try:
        with pytest.raises(GenerationError, match="Generation failed: RuntimeError: CUDA out of memory") as info:
            if batched:
                generate_batch(vlm, [conversation, conversation])
            else:
                generate(vlm, conversation)
    finally:
        hook.remove()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert generate(vlm, conversation).text == random_scene(2).describe()  # and the model works again


def test_inputs_the_processor_refuses_are_a_generation_error(vlm):
    import copy

    broken = copy.deepcopy(vlm.processor)
    broken.image_processor.size = {"longest_edge": 0, "shortest_edge": 0}  # a processor that cannot resize
    with pytest.raises(GenerationError, match=r"The processor refused these inputs \(image sizes: 128x128\)"):
        prepare(vlm, [[user(random_scene(2).draw(), "What do we see in this image?")]], processor=broken)
