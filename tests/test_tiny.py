"""The tiny Idefics2's pieces: tokenizer, labels, schedule, a short real training run, the model card."""

from __future__ import annotations

import json
import random
import shutil

import psutil
import pytest
import torch

from vlm_course.models import TINY_MODEL_DIR, load_vlm
from vlm_course.tiny.build import build_processor, grid_sincos, tokenizer_corpus, train_tokenizer
from vlm_course.tiny.train import (TrainConfig, answer_labels, batch_stream, learning_rate, make_batch, make_batches,
                                   polish, polish_rate, train_tiny)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(tokenizer_corpus(n=300))


def test_tokenizer_round_trips_any_text(tokenizer):
    for text in ("What do we see in this image?", "Ünïcödé ✓ 東京 — tabs\tand\nnewlines", "a red circle."):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text
    assert tokenizer("x").input_ids[0] == tokenizer.bos_token_id  # like Idefics2's tokenizer


def test_labels_cover_only_the_answers_and_their_end_token(tokenizer):
    processor = build_processor(tokenizer)
    tokenizer.padding_side = "right"
    assistant_ids = tokenizer("\nAssistant:", add_special_tokens=False).input_ids[1:]
    end = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    batch = make_batch(processor, random.Random(0), 8, assistant_ids, end)
    for row in range(8):
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        decoded = tokenizer.decode(labelled)
        assert decoded.count("<end_of_utterance>") in (1, 2, 3)  # one answer, or one a turn of a longer dialogue
        assert "User" not in decoded and "<image>" not in decoded and "Assistant" not in decoded
        assert decoded.endswith("<end_of_utterance>")


def test_batches_are_seeded_and_grouped_by_length(tokenizer):
    processor = build_processor(tokenizer)
    tokenizer.padding_side = "right"
    cfg = TrainConfig(batch_size=8, group=4, workers=1)
    from_worker = [next(it) for it in [batch_stream(processor, 5, cfg)] for _ in range(4)]
    in_process = [next(it) for it in [batch_stream(processor, 5, TrainConfig(batch_size=8, group=4, workers=0))]
                  for _ in range(4)]
    for a, b in zip(from_worker, in_process):  # the same seed gives the same batches, in a worker or not
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    assert not torch.equal(from_worker[0]["input_ids"], next(batch_stream(processor, 6, cfg))["input_ids"])
    two = batch_stream(processor, 5, TrainConfig(batch_size=8, group=1, workers=2))
    first, second = next(two), next(two)  # one from each worker: two streams, not one stream twice
    assert not torch.equal(first["pixel_values"], second["pixel_values"])

    def padding(batches):
        return sum(int((b["attention_mask"] == 0).sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)

    args = (processor, random.Random(0), 16, [0], 0)
    grouped = make_batches(*args, n_batches=8)
    mixed = [make_batch(processor, random.Random(i), 16, [0], 0) for i in range(8)]
    assert padding(grouped) < 0.5 * padding(mixed)


def test_more_questions_ask_about_the_images_own_scene(tokenizer):
    """Training's extra turns: text-only questions about the one image already in the sample, answered for its scene."""
    from vlm_course.shapes.questions import NUMBERS, ask_more, make_sample

    rng = random.Random(3)
    for family in ("position", "describe", "attribute"):
        sample = make_sample(family, rng)
        longer = ask_more(sample, rng, ("count",), (1.0,), 2)
        assert longer.messages[:2] == sample.messages and len(longer.messages) == 6 and longer.family == family
        assert len(longer.images) == 1  # no new image: the questions are about the one already there
        things = sample.scenes[0].things
        for asked, answered in zip(longer.messages[2::2], longer.messages[3::2]):
            question, answer = asked["content"][0]["text"], answered["content"][0]["text"]
            if question in ("How many shapes are there?", "How many objects are there?"):
                assert answer == NUMBERS[len(things)] + "."
            else:  # how many of one shape or one colour
                word = question.split()[2].removesuffix("s")
                assert answer == NUMBERS[sum(word in (t.shape, t.colour) for t in things)] + "."

    processor = build_processor(tokenizer)
    tokenizer.padding_side = "right"
    end = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    assistant_ids = tokenizer("\nAssistant:", add_special_tokens=False).input_ids[1:]
    weights = {"position": 1.0, "two_images": 1.0}  # one family of one image, one of two
    [batch] = make_batches(processor, random.Random(0), 16, assistant_ids, end, weights=weights, more_questions=2)
    answers = ((batch["input_ids"] == end) & (batch["labels"] != -100)).sum(1).tolist()
    assert set(answers) == {1, 3}  # two images: one answer, as drawn; one image: its answer and two more
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    one_image = [int((row == image_token).sum()) == 8 for row in batch["input_ids"]]  # 8 image tokens an image
    assert [n == 3 for n in answers] == one_image


def test_patch_targets_follow_the_drawn_objects():
    from vlm_course.shapes.world import Scene, Thing
    from vlm_course.tiny.vision_pretrain import CELL_CLASSES, COLOUR_CLASSES, SHAPE_CLASSES, patch_targets

    scene = Scene((Thing("square", "red", 0, 0, 1 / 6, 1 / 6, 0.14), Thing("circle", "blue", 2, 2, 5 / 6, 5 / 6, 0.12)))
    shapes, colours, cells = (t.view(8, 8) for t in patch_targets(scene, 64, 8))
    assert shapes[1, 1] == SHAPE_CLASSES.index("square") and colours[1, 1] == COLOUR_CLASSES.index("red")
    assert shapes[6, 6] == SHAPE_CLASSES.index("circle") and colours[6, 6] == COLOUR_CLASSES.index("blue")
    assert cells[1, 1] == CELL_CLASSES.index("at the top left") and cells[6, 6] == CELL_CLASSES.index("at the bottom right")
    # a patch across the first column's border still names its object's cell
    assert cells[1, 2] == CELL_CLASSES.index("at the top left")
    assert shapes[4, 4] == colours[4, 4] == cells[4, 4] == 0 and shapes[0, 7] == 0  # background in the middle and a far corner
    assert int((shapes > 0).sum()) < 20  # only the patches the two objects cover


def test_vision_positions_start_as_a_grid():
    table = grid_sincos(64, 64)  # 8 x 8 patches
    assert table.shape == (64, 64) and abs(float(table.std()) - 1) < 1e-5
    distance = lambda a, b: float((table[a] - table[b]).norm())
    # neighbours are closer than far cells, along rows and along columns alike
    assert distance(0, 1) < distance(0, 7) and distance(0, 8) < distance(0, 56)
    assert abs(distance(0, 1) - distance(0, 8)) < 1e-5


def test_answer_labels_on_a_hand_made_sequence():
    ids = torch.tensor([[1, 9, 7, 8, 5, 5, 6, 0, 7, 8, 4, 6, 0]])  # 7, 8 = "Assistant:", 6 = end
    labels = answer_labels(ids, [7, 8], 6)
    assert labels.tolist() == [[-100, -100, -100, -100, 5, 5, 6, -100, -100, -100, 4, 6, -100]]


def test_schedule_warms_up_holds_and_decays():
    cfg = TrainConfig(steps=1000, warmup=100, hold=0.5, lr=1e-3, min_lr=1e-4)
    assert learning_rate(0, cfg) == pytest.approx(1e-5)
    assert learning_rate(300, cfg) == learning_rate(499, cfg) == 1e-3
    assert learning_rate(999, cfg) == pytest.approx(1e-4, rel=1e-3)
    assert learning_rate(700, cfg) < 1e-3
    cfg = TrainConfig(polish_steps=1000, polish_lr=2e-4, min_lr=2e-5)
    assert polish_rate(0, cfg) < polish_rate(49, cfg) == pytest.approx(2e-4)
    assert polish_rate(999, cfg) == pytest.approx(2e-5, rel=1e-2)


def test_a_short_training_run_saves_a_loadable_model(tmp_path):
    out = train_tiny(tmp_path / "tiny", TrainConfig(vision_steps=2, steps=11, warmup=2, polish_steps=0, batch_size=4,
                                                    checkpoint_every=20), progress=False)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "loss_curve.png"):
        assert (out / name).is_file(), name
    log = json.loads((out / "training.json").read_text())
    assert log["steps_done"] == 11 and [h["step"] for h in log["history"]] == [0, 10]  # logged every 10 steps
    first, tenth = (h["loss"] for h in log["history"])
    assert tenth < 0.9 * first, log["history"]  # it learns: ten steps from random weights cut the loss (6.25 -> 5.37)
    assert log["vision_pretraining"]["steps"] == 2 and log["seconds"] >= log["vision_pretraining"]["seconds"]
    assert log["parameters"]["total"] == sum(log["parameters"][k] for k in ("vision", "connector", "text", "lm_head"))
    assert not psutil.Process().children(), "the DataLoader's worker outlived training"
    before = (out / "model.safetensors").read_bytes()
    polish(out, TrainConfig(steps=11, polish_steps=2, batch_size=4), progress=False)  # stage 2, resumed
    log = json.loads((out / "training.json").read_text())
    assert log["steps_done"] == 13 and (out / "model.safetensors").read_bytes() != before
    assert "vision_pretraining" in log  # the record of stage 0 survives the resumed stage
    vlm = load_vlm(out)
    assert vlm.model.generation_config.eos_token_id[-1] == vlm.tokenizer.convert_tokens_to_ids("<end_of_utterance>")


def test_training_is_seeded(tmp_path):
    """The same seed retrains the same weights (the batches come from a worker process); another seed does not."""
    from safetensors.torch import load_file

    cfg = dict(vision_steps=3, steps=4, polish_steps=2, batch_size=4, checkpoint_every=10)
    runs = {name: load_file(train_tiny(tmp_path / name, TrainConfig(seed=seed, **cfg), progress=False) / "model.safetensors")
            for name, seed in (("first", 0), ("again", 0), ("other", 1))}
    assert runs["first"].keys() == runs["again"].keys()
    assert all(torch.equal(runs["first"][k], runs["again"][k]) for k in runs["first"])
    assert not all(torch.equal(runs["first"][k], runs["other"][k]) for k in runs["first"])
    # stage 1 is kept, and polishing a copy of it repeats the run's own stage 2 (how polish variants are tried)
    copy = shutil.copytree(tmp_path / "first" / "stage1", tmp_path / "polished")
    polished = load_file(polish(copy, TrainConfig(seed=0, **cfg), progress=False) / "model.safetensors")
    assert all(torch.equal(runs["first"][k], polished[k]) for k in polished)


def test_model_card_reports_the_measured_evaluation():
    card = (TINY_MODEL_DIR / "README.md").read_text()
    for section in ("Architecture", "Training", "Evaluation", "Limitations"):
        assert section in card
    scores = json.loads((TINY_MODEL_DIR / "evaluation.json").read_text())
    for family in ("describe", "attribute", "count", "exists", "position", "two_images", "multi_turn", "description"):
        assert f"{scores[family]['accuracy']:.1%}" in card, family


def test_polish_without_a_first_stage_says_so(tmp_path):
    from vlm_course.errors import ModelNotFoundError

    shutil.copytree(TINY_MODEL_DIR, tmp_path / "m", ignore=shutil.ignore_patterns("training.json"))
    with pytest.raises(ModelNotFoundError, match="has no training.json.*train-tiny"):
        polish(tmp_path / "m", TrainConfig(steps=3, polish_steps=2, batch_size=4), progress=False)
