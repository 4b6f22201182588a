"""The tiny BLIP-2: the real transformers classes load it, it sees the shapes world, and the course's
loader, captioner, command line and reference config treat it like any other model."""

from __future__ import annotations

import json
import random

import pytest

from vlm_course.caption import blip2_generate, blip2_prompt, caption
from vlm_course.models import TINY_BLIP2_DIR, load_vlm
from vlm_course.tiny_blip2.evaluate import eval_tasks
from vlm_course.tiny_blip2.tasks import TASKS, make_task


@pytest.fixture(scope="module")
def blip2():
    return load_vlm("tiny-blip2", device="cpu")


def test_auto_classes_load_the_shipped_directory():
    from transformers import AutoModelForImageTextToText, AutoProcessor, Blip2ForConditionalGeneration, Blip2Processor

    processor = AutoProcessor.from_pretrained(TINY_BLIP2_DIR)
    model = AutoModelForImageTextToText.from_pretrained(TINY_BLIP2_DIR)
    assert isinstance(processor, Blip2Processor) and isinstance(model, Blip2ForConditionalGeneration)
    assert model.config.num_query_tokens == processor.num_query_tokens == 8
    assert model.config.text_config.model_type == "opt"
    assert (TINY_BLIP2_DIR / "model.safetensors").stat().st_size <= 15_000_000
    assert (TINY_BLIP2_DIR / "README.md").is_file() and (TINY_BLIP2_DIR / "training.json").is_file()


def test_load_vlm_by_name(blip2):
    assert blip2.name == "tiny-blip2"
    assert type(blip2.model).__name__ == "Blip2ForConditionalGeneration"


def test_processor_puts_the_query_tokens_first(blip2):
    """BLIP-2's layout: 8 <image> placeholders (the Q-Former's outputs go there), then <s> and the prompt."""
    task = make_task("attribute", random.Random(0))
    ids = blip2.processor(images=[task.image], text=[task.prompt], return_tensors="pt")["input_ids"][0].tolist()
    image_id = blip2.model.config.image_token_index
    assert ids[:8] == [image_id] * 8 and image_id not in ids[8:]
    assert ids[8] == blip2.tokenizer.bos_token_id
    assert blip2.tokenizer.decode(ids[9:]) == task.prompt


def test_training_labels_keep_only_the_answer(blip2):
    from vlm_course.tiny_blip2.train import make_batch

    rng = random.Random(3)
    tasks = [make_task(family, rng) for family in TASKS]
    batch = make_batch(blip2.processor, tasks)
    assert batch["attention_mask"][:, -1].tolist() != [1] * len(tasks)  # padded on the right
    for row, task in enumerate(tasks):
        kept = [t for t in batch["labels"][row].tolist() if t != -100]
        assert blip2.tokenizer.decode(kept[:-1]).strip() == task.answer
        assert kept[-1] == blip2.tokenizer.eos_token_id


def test_captions_are_correct_on_a_held_out_sample(blip2):
    """Exact match floors far above chance (a caption names 1-3 of 18 coloured shapes in order), so a
    broken or untrained model fails; the full evaluation (`vlm-course eval --model tiny-blip2`) is
    in the model card."""
    tasks = eval_tasks("caption", 40, seed=11)
    got = caption(blip2, [t.image for t in tasks], batch_size=16)
    assert sum(g == t.answer for g, t in zip(got, tasks)) >= 34


@pytest.mark.parametrize("family", ["attribute", "count", "exists", "position"])
def test_prompted_questions_are_answered(blip2, family):
    tasks = eval_tasks(family, 24, seed=11)
    got = caption(blip2, [t.image for t in tasks], [t.prompt for t in tasks], batch_size=12)
    assert sum(g == t.answer for g, t in zip(got, tasks)) >= 19, list(zip(got, [t.answer for t in tasks]))


def test_batched_captions_equal_single_ones(blip2):
    tasks = eval_tasks("perturbed", 10, seed=5)
    images, prompts = [t.image for t in tasks], [t.prompt or None for t in tasks]
    batched = caption(blip2, images, prompts, batch_size=10)
    alone = [caption(blip2, im, p)[0] for im, p in zip(images, prompts)]
    assert batched == alone


def test_details_and_per_row_limits(blip2):
    task = eval_tasks("caption", 1, seed=2)[0]
    full, short = blip2_generate(blip2.model, blip2.processor, [task.image] * 2, [None, None], [32, 2], details=True)
    assert full.finish_reason == "stop" and full.prompt_tokens == 9  # 8 query tokens + <s>
    assert short.finish_reason == "length" and short.completion_tokens == 2
    assert full.text.startswith(short.text)


def test_blip2_prompt_style():
    assert blip2_prompt("What colour is the circle?") == "Question: what colour is the circle? Answer:"


def test_chat_and_stream_take_one_image_and_a_prompt(blip2):
    """chat.prepare hands BLIP-2 its own inputs: the chat functions (and the server) work unchanged."""
    from vlm_course import chat
    from vlm_course.errors import MessagesError

    task = eval_tasks("position", 1, seed=4)[0]
    reply = chat.generate(blip2, [chat.user(task.image, task.prompt)])
    assert reply.text == caption(blip2, task.image, task.prompt)[0] and reply.finish_reason == "stop"
    assert "".join(chat.stream(blip2, [chat.user(task.image, task.prompt)])) == reply.text
    with pytest.raises(MessagesError, match="one image per request"):
        chat.generate(blip2, [chat.user(task.image, task.image, "Which has more shapes?")])


def test_reference_config_of_blip2_opt_2_7b():
    """The published Salesforce/blip2-opt-2.7b configuration, counted on the meta device."""
    from vlm_course.memory import meta_model
    from vlm_course.tiny_blip2.card import parameter_counts
    from vlm_course.caption_bench import BLIP2_OPT_2_7B

    data = json.loads(BLIP2_OPT_2_7B.read_text())
    assert data["num_query_tokens"] == 32 and data["text_config"]["hidden_size"] == 2560
    counts = parameter_counts(meta_model(BLIP2_OPT_2_7B))
    assert counts["vision"] == 985_952_256 and counts["projection"] == 1_968_640
    assert counts["qformer"] == 105_137_664 + 32 * 768  # the Q-Former and its 32 query tokens
    assert counts["total"] == 3_744_761_856


def test_eval_command_prints_the_table(capsys):
    from vlm_course.cli import main

    assert main(["eval", "--model", "tiny-blip2", "--n", "8", "--families", "caption,count", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "caption" in out and "count" in out and "97%" in out


def test_train_command_writes_a_loadable_model(tmp_path):
    from vlm_course.cli import main

    out = tmp_path / "b2"
    assert main(["train-tiny", "--model", "blip2", "--out", str(out), "--vision-steps", "2", "--steps", "3",
                 "--polish-steps", "2", "--batch-size", "4", "--workers", "0"]) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["steps_done"] == 5 and record["parameters"]["total"] > 0 and len(record["probes"]) == 2
    assert record["cpu_seconds"] > 0 and (out / "stage1" / "model.safetensors").is_file()
    assert load_vlm(str(out), device="cpu").model.config.model_type == "blip-2"
