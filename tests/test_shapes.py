"""The shapes world: scenes obey their rules, answers follow from the scene, evaluation is held out."""

from __future__ import annotations

import random

import pytest

from vlm_course.shapes import COLOURS, FAMILIES, SHAPES, detailed_description, make_sample, random_scene
from vlm_course.shapes.questions import DETAIL_QUESTIONS
from vlm_course.shapes.evaluate import eval_samples, normalise
from vlm_course.shapes.world import POSITIONS, draw_scene, with_article


def test_scenes_are_seeded_and_follow_the_rules():
    assert random_scene(3) == random_scene(3)
    assert random_scene(3) != random_scene(4)
    counts = set()
    for seed in range(300):
        s = random_scene(seed)
        counts.add(len(s.things))
        cells = [(t.col, t.row) for t in s.things]
        assert len(set(cells)) == len(cells), "two objects share a cell"
        assert len({t.name for t in s.things}) == len(s.things), "the same coloured shape twice"
        assert cells == sorted(cells), "not listed left to right, then top to bottom"
        for t in s.things:
            assert t.shape in SHAPES and t.colour in COLOURS
            # the object lies inside its cell, so objects never overlap
            for centre, r, cell in ((t.x, t.radius, t.col), (t.y, t.radius, t.row)):
                assert cell / 3 <= centre - r and centre + r <= (cell + 1) / 3
    assert counts == {1, 2, 3}


def test_the_whole_world_occurs():
    scenes = [random_scene(seed) for seed in range(500)]
    assert any(len({t.shape for t in s.things}) < len(s.things) for s in scenes), "no repeated shape"
    assert any(len({t.colour for t in s.things}) < len(s.things) for s in scenes), "no repeated colour"
    positions = {t.position for s in scenes for t in s.things}
    assert positions == {p for row in POSITIONS for p in row}
    stacked = any(len({t.col for t in s.things}) < len(s.things) for s in scenes)
    assert stacked, "no two objects in one column"


def test_drawing_puts_the_right_colours_where_the_objects_are():
    s = random_scene(11)
    img = draw_scene(s, size=128)
    assert img.size == (128, 128) and img.mode == "RGB"
    for t in s.things:
        assert img.getpixel((int(t.x * 128), int(t.y * 128))) == COLOURS[t.colour]
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_descriptions_follow_from_the_scene():
    s = random_scene(5, n=3)
    names = [with_article(t.name) for t in s.things]
    assert s.describe() == f"{names[0]}, {names[1]} and {names[2]}."
    text = detailed_description(s)
    assert text.startswith("There are three shapes.")
    for t in s.things:
        assert f"{t.name} is {t.position}." in text
    assert with_article("orange square") == "an orange square"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_makes_consistent_samples(family):
    rng = random.Random(0)
    for _ in range(50):
        sample = make_sample(family, rng)
        assert sample.messages[-1]["role"] == "assistant"
        assert sample.messages[-1]["content"][0]["text"] == sample.answer
        assert sample.prompt[-1]["role"] == "user"
        assert len(sample.images) == sum(p["type"] == "image" for m in sample.messages for p in m["content"])


def test_answers_are_right_for_the_scene():
    rng = random.Random(1)
    for _ in range(200):
        sample = make_sample("count", rng)
        q = sample.prompt[-1]["content"][-1]["text"]
        things = sample.scenes[0].things
        if q.startswith("How many shapes") or q.startswith("How many objects"):
            n = len(things)
        elif any(q == f"How many {shape}s are there?" for shape in SHAPES):
            n = sum(f"{t.shape}s" in q for t in things)
        else:
            n = sum(q == f"How many {t.colour} shapes are there?" for t in things)
        assert sample.answer == ["none.", "one.", "two.", "three."][n]


def _training_samples(monkeypatch, processor, batches: int = 2):
    """Samples of the trainer's own stream (stage 1, the shipped seed), recorded as its code draws them."""
    from vlm_course.tiny import train

    drawn = []

    def record(*args, **kwargs):
        drawn.append(make_sample(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(train, "make_sample", record)
    cfg = train.TrainConfig(batch_size=16, group=4, workers=0)
    stream = iter(train.ShapesBatches(processor, cfg.seed + 1_000_003, cfg))
    for _ in range(batches):
        next(stream)
    return drawn


def test_evaluation_sets_are_fixed_and_unlike_training(monkeypatch, vlm):
    a = eval_samples("describe", 20)
    b = eval_samples("describe", 20)
    assert [s.answer for s in a] == [s.answer for s in b]
    assert [s.answer for s in eval_samples("describe", 20, perturbed=True)] != [s.answer for s in a]
    unknown = eval_samples("unknown", 30)
    assert all(s.answer == "I only know about shapes." for s in unknown)
    assert normalise("  a red  circle. ") == "a red circle."
    # Held out: no scene of the evaluation is a scene the trainer draws, and the out-of-world questions use
    # words the trainer never asks about.
    training = _training_samples(monkeypatch, vlm.processor)
    assert len(training) == 64
    seen = {scene for s in training for scene in s.scenes}
    evaluation = [scene for f in FAMILIES for s in eval_samples(f, 20) for scene in s.scenes]
    assert len(evaluation) > 100 and not seen & set(evaluation)
    from vlm_course.shapes.questions import render_training

    rng = random.Random(0)  # out-of-world questions as training asks them (the stream above has few)
    asked = {make_sample("unknown", rng, render_training).prompt[-1]["content"][-1]["text"] for _ in range(300)}
    held_out = {s.prompt[-1]["content"][-1]["text"] for s in unknown}
    assert len(asked) > 50 and not asked & held_out


def test_perturbed_image_changes_the_drawing_but_not_the_scene():
    from PIL import ImageChops

    from vlm_course.shapes.world import perturbed_image

    scene = random_scene(12)
    clean = scene.draw(256)
    a, b = perturbed_image(scene, random.Random(1)), perturbed_image(scene, random.Random(1))
    assert a.size == (256, 256) and a.tobytes() == b.tobytes()  # seeded
    assert a.getpixel((0, 0)) != (255, 255, 255)  # a tinted canvas
    assert ImageChops.difference(a, clean).getbbox() is not None  # a different drawing...
    assert perturbed_image(scene, random.Random(2)).tobytes() != a.tobytes()
    # ...of the same objects: each still covers its own cell's centre region in its colour, roughly.
    from vlm_course.shapes.world import COLOURS
    for t in scene.things:
        px = a.getpixel((int(t.x * 256), int(t.y * 256)))
        assert sum(abs(p - q) for p, q in zip(px, COLOURS[t.colour])) < 90, (t, px)


def test_unknown_family_raises_clearly():
    with pytest.raises(ValueError, match="unknown question family"):
        make_sample("colours", random.Random(0))


def test_evaluation_bars_live_with_the_evaluation(tmp_path):
    """tiny/card imported its bars from cli (a cycle: cli -> tiny/train -> tiny/card -> cli)."""
    import subprocess
    import sys

    import shutil

    from vlm_course.models import TINY_MODEL_DIR

    shutil.copytree(TINY_MODEL_DIR, tmp_path / "model")
    code = ("import sys; from vlm_course.tiny.card import write_card; import vlm_course.shapes.evaluate as e; "
            f"write_card({str(tmp_path / 'model')!r}); "
            "assert 'vlm_course.cli' not in sys.modules, 'tiny.card imports the cli'; "
            "assert set(e.SINGLE_IMAGE_FAMILIES) <= set(e.BARS)")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "model" / "README.md").read_text() == (TINY_MODEL_DIR / "README.md").read_text()


def test_follow_ups_ask_about_the_image_already_in_the_conversation():
    """A follow-up is a text-only user turn whose answer is the one its question has about the last image shown."""
    from vlm_course.shapes.questions import QUESTIONS

    rng = random.Random(3)
    firsts = set()
    for _ in range(150):
        s = make_sample("follow_up", rng)
        last = s.prompt[-1]["content"]
        assert [p["type"] for p in last] == ["text"], "the follow-up itself brings no image"
        assert len(s.images) >= 1 and s.messages[1]["role"] == "assistant"
        firsts.add(s.messages[0]["content"][-1]["text"])
        q = last[0]["text"]
        if len(s.scenes) == 1:  # one image, or a second one shown with "And how about this image?"
            # on a given scene a question has one answer: replay the question generators on the scene until one
            # words the same question, and compare
            scene = s.scenes[0]
            found = next((a for seed in range(20_000) for f in QUESTIONS
                          for qq, a in [QUESTIONS[f](scene, random.Random(seed))] if qq == q), None)
            assert s.answer == found, (q, s.answer, found)
    assert any(q in DETAIL_QUESTIONS for q in firsts) and any(q.startswith("How many") for q in firsts), \
        "follow-ups come after every kind of first answer, a detailed description included"


def test_outside_pictures_get_the_honest_answer_and_are_seeded():
    from vlm_course.shapes.evaluate import eval_samples
    from vlm_course.shapes.outside import KINDS, outside_picture
    from vlm_course.shapes.questions import UNKNOWN_ANSWER

    for kind in KINDS:
        a, b = outside_picture(random.Random(5), kind), outside_picture(random.Random(5), kind)
        assert a.tobytes() == b.tobytes() and a.mode == "RGB"
        colours = a.resize((32, 32)).getcolors(32 * 32)
        assert len(colours) > 2, f"{kind}: a picture, not a blank canvas"
    samples = eval_samples("outside", 8)
    assert all(s.answer == UNKNOWN_ANSWER and len(s.images) == 1 and not s.scenes for s in samples)
    questions = {s.prompt[-1]["content"][-1]["text"] for s in eval_samples("outside", 60)}
    assert len(questions) > 20, "any question, not one wording"
