"""Questions about scenes, with their one correct answer, as chat conversations.

Each generator returns a `Sample`: the messages of a conversation in transformers' format (images
travel inside the messages as {"type": "image", "image": PIL image}), ending with the assistant's
correct answer. Drop the last message to get the prompt; `answer` is what an exact match expects.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image

from ..messages import assistant, user
from .world import COLOURS, with_article, SHAPES, Scene, draw_scene, join_names, perturbed_image, random_scene

NUMBERS = ("none", "one", "two", "three")
UNKNOWN_ANSWER = "I only know about shapes."

DESCRIBE_QUESTIONS = ("What do we see in this image?", "What is in this image?", "What do you see?",
                      "What is in the picture?")
DETAIL_QUESTIONS = ("Describe this image in detail.", "Describe the image in detail.")
FOLLOW_UP = "And how about this image?"
DIFFERENCE = "What is the difference between these two images?"
MORE = "Which image has more shapes?"


@dataclass
class Sample:
    family: str
    messages: list[dict]
    answer: str
    scenes: list[Scene] = field(default_factory=list)

    @property
    def prompt(self) -> list[dict]:
        """The conversation without the final answer: what to give the model."""
        return self.messages[:-1]

    @property
    def images(self) -> list[Image.Image]:
        return [part["image"] for m in self.messages for part in m["content"] if part["type"] == "image"]


# --- how images are rendered -------------------------------------------------------------------

def render_clean(scene: Scene, rng: random.Random) -> Image.Image:
    return draw_scene(scene, size=128)


def render_perturbed(scene: Scene, rng: random.Random) -> Image.Image:
    return perturbed_image(scene, rng)


def render_training(scene: Scene, rng: random.Random) -> Image.Image:
    """Clean half the time, otherwise varied the ways a real drawing varies (size, tint, JPEG, jitter)."""
    if rng.random() < 0.5:
        return draw_scene(scene, size=rng.choice((64, 128)))
    if rng.random() < 0.5:
        scene = Scene(scene.things, tuple(rng.randint(215, 255) for _ in range(3)), scene.seed)
    return draw_scene(scene, size=rng.choice((64, 96, 128, 256)), jitter=rng.choice((0.0, 0.012)), rng=rng,
                      jpeg_quality=rng.choice((None, 60, 75, 90)))


Render = Callable[[Scene, random.Random], Image.Image]


# --- answers -------------------------------------------------------------------------------------

def detailed_description(scene: Scene) -> str:
    n = len(scene.things)
    head = "There is one shape." if n == 1 else f"There are {NUMBERS[n]} shapes."
    return " ".join([head] + [f"{with_article(t.name).capitalize()} is {t.position}." for t in scene.things])


def difference(first: Scene, second: Scene) -> str:
    if first.describe() == second.describe():
        return "there is no difference."
    return f"the first image has {first.describe()[:-1]}; the second has {second.describe()}"


def more_shapes(first: Scene, second: Scene) -> str:
    a, b = len(first.things), len(second.things)
    return "the first image." if a > b else "the second image." if b > a else "they have the same number."


# --- the question families ----------------------------------------------------------------------
# Each takes `colours` (the palette, default the six of COLOURS) and `include` (a colour every scene must
# show, default none): lesson 09 asks the same questions about scenes with pink in them.

# Each question about a scene: (question, answer) for a scene already drawn, so that a follow-up turn can ask
# it about the image already in the conversation. The ask_* families below draw the scene and call these.

def question_describe(s, rng, colours=None):
    return rng.choice(DESCRIBE_QUESTIONS), s.describe()


def question_attribute(s, rng, colours=None):
    if rng.random() < 0.5:  # colour of a shape
        shape = rng.choice([t.shape for t in s.things] if rng.random() < 0.85 else SHAPES)
        found = [t.colour for t in s.things if t.shape == shape]
        q = rng.choice(("What colour is the {}?", "What color is the {}?")).format(shape)
        a = join_names(found) + "." if found else f"there is no {shape}."
    else:  # shape of a colour
        colour = rng.choice([t.colour for t in s.things] if rng.random() < 0.85 else list(colours or COLOURS))
        shapes = [with_article(t.shape) for t in s.things if t.colour == colour]
        q = rng.choice(("What shape is the {} one?", "What shape is the {} object?")).format(colour)
        a = join_names(shapes) + "." if shapes else f"there is nothing {colour}."
    return q, a


def question_count(s, rng, colours=None):
    kind = rng.random()
    if kind < 0.4:
        q, n = rng.choice(("How many shapes are there?", "How many objects are there?")), len(s.things)
    elif kind < 0.7:
        shape = rng.choice(SHAPES)
        q, n = f"How many {shape}s are there?", sum(t.shape == shape for t in s.things)
    else:
        colour = rng.choice([t.colour for t in s.things] if rng.random() < 0.7 else list(colours or COLOURS))
        q, n = f"How many {colour} shapes are there?", sum(t.colour == colour for t in s.things)
    return q, NUMBERS[n] + "."


def question_exists(s, rng, colours=None):
    present = rng.random() < 0.5
    kind = rng.random()
    if kind < 0.4:  # a shape
        shapes = {t.shape for t in s.things}
        pool = sorted(shapes) if present or len(shapes) == 3 else sorted(set(SHAPES) - shapes)
        shape = rng.choice(pool)
        q, yes = f"Is there {with_article(shape)}?", shape in shapes
    elif kind < 0.8:  # a coloured shape
        names = {t.name for t in s.things}
        pool = sorted(names) if present else sorted({f"{c} {sh}" for c in colours or COLOURS for sh in SHAPES} - names)
        name = rng.choice(pool)
        q, yes = f"Is there {with_article(name)}?", name in names
    else:  # a colour
        found = {t.colour for t in s.things}
        pool = sorted(found) if present else sorted(set(colours or COLOURS) - found)
        colour = rng.choice(pool)
        q, yes = f"Is there anything {colour}?", colour in found
    return q, "yes." if yes else "no."


def question_position(s, rng, colours=None):
    if rng.random() < 0.9:
        t = rng.choice(s.things)
        return f"Where is the {t.name}?", f"{t.position}."
    names = {t.name for t in s.things}
    name = rng.choice(sorted({f"{c} {sh}" for c in colours or COLOURS for sh in SHAPES} - names))
    return f"Where is the {name}?", f"there is no {name}."


def question_description(s, rng, colours=None):
    return rng.choice(DETAIL_QUESTIONS), detailed_description(s)


QUESTIONS: dict[str, Callable] = {"describe": question_describe, "attribute": question_attribute,
                                  "count": question_count, "exists": question_exists,
                                  "position": question_position, "description": question_description}


def _ask_one(family, image_first=False):
    """The family's one-image question on a fresh scene. `image_first`: the image is drawn before the question
    is chosen (describe and description always drew it first: their seeded evaluation sets stay as they were)."""
    def ask(rng, render, colours=None, include=None):
        s = random_scene(rng, colours=colours, include=include)
        image = render(s, rng) if image_first else None
        q, a = QUESTIONS[family](s, rng, colours)
        if image is None:
            image = render(s, rng)
        return Sample(family, [user(image, q), assistant(a)], a, [s])
    ask.__name__ = f"ask_{family}"
    return ask


ask_attribute, ask_count, ask_exists, ask_position = map(_ask_one, ("attribute", "count", "exists", "position"))
ask_describe, ask_description = (_ask_one(family, image_first=True) for family in ("describe", "description"))


def ask_more(sample: Sample, rng: random.Random, families: tuple, weights: tuple, n: int,
             colours=None) -> Sample:
    """`sample` (one scene, one image) with `n` more text-only questions about its image, in the families
    drawn by `weights`. Training only: one image through the vision tower then teaches several answers."""
    msgs = list(sample.messages)
    for _ in range(n):
        q, a = QUESTIONS[rng.choices(families, weights)[0]](sample.scenes[0], rng, colours)
        msgs += [user(q), assistant(a)]
    return Sample(sample.family, msgs, sample.answer, sample.scenes)


def ask_two_images(rng, render, colours=None, include=None):
    first = random_scene(rng, colours=colours, include=include)
    second = first if rng.random() < 0.1 else random_scene(rng, colours=colours, include=include)
    if rng.random() < 0.5:
        q, a = DIFFERENCE, difference(first, second)
    else:
        q, a = MORE, more_shapes(first, second)
    msgs = [user(render(first, rng), render(second, rng), q), assistant(a)]
    return Sample("two_images", msgs, a, [first, second])


def ask_multi_turn(rng, render, colours=None, include=None):
    first, second = random_scene(rng, colours=colours, include=include), random_scene(rng, colours=colours, include=include)
    msgs = [user(render(first, rng), rng.choice(DESCRIBE_QUESTIONS)), assistant(first.describe()),
            user(FOLLOW_UP, render(second, rng)), assistant(second.describe())]
    return Sample("multi_turn", msgs, second.describe(), [first, second])


def ask_follow_up(rng, render, colours=None, include=None):
    """Text-only follow-up questions about the images already in the conversation, after any first answer.

    Mostly one image, then one or two follow-ups of any single-image family. Sometimes the follow-up comes
    after a second image ("And how about this image?": it is about that one), or it is the other question
    about two images."""
    s = random_scene(rng, colours=colours, include=include)
    kind = rng.random()
    if kind < 0.9:
        if kind < 0.78:
            q, a = QUESTIONS[rng.choice(SINGLE_IMAGE)](s, rng, colours)
            msgs = [user(render(s, rng), q), assistant(a)]
        else:
            first = random_scene(rng, colours=colours, include=include)
            msgs = [user(render(first, rng), rng.choice(DESCRIBE_QUESTIONS)), assistant(first.describe()),
                    user(FOLLOW_UP, render(s, rng)), assistant(s.describe())]
        for _ in range(1 if rng.random() < 0.7 else 2):
            q, a = QUESTIONS[rng.choice(SINGLE_IMAGE)](s, rng, colours)
            msgs += [user(q), assistant(a)]
        return Sample("follow_up", msgs, a, [s])
    first = random_scene(rng, colours=colours, include=include)
    asked = (DIFFERENCE, MORE) if rng.random() < 0.5 else (MORE, DIFFERENCE)
    answers = [difference(first, s) if q == DIFFERENCE else more_shapes(first, s) for q in asked]
    msgs = [user(render(first, rng), render(s, rng), asked[0]), assistant(answers[0]),
            user(asked[1]), assistant(answers[1])]
    return Sample("follow_up", msgs, answers[1], [first, s])


def ask_outside(rng, render, colours=None, include=None, kind: str | None = None):
    """A picture from outside the shapes world (photo-like, noise, text, a drawing) and any question about
    it, even a follow-up: the honest answer is always that the model only knows about shapes."""
    from .outside import outside_picture

    picture = outside_picture(rng, kind)
    s = random_scene(rng, colours=colours)  # only to word a question as it would be asked about shapes
    family = rng.choice(SINGLE_IMAGE + ("unknown",))
    q = rng.choice(_UNKNOWN_FIXED) if family == "unknown" else QUESTIONS[family](s, rng, colours)[0]
    msgs = [user(picture, q), assistant(UNKNOWN_ANSWER)]
    if rng.random() < 0.2:
        msgs += [user(QUESTIONS[rng.choice(SINGLE_IMAGE)](s, rng, colours)[0]), assistant(UNKNOWN_ANSWER)]
    return Sample("outside", msgs, UNKNOWN_ANSWER, [])


# Questions from outside the shapes world: the model should admit it only knows about shapes.
_UNKNOWN_TEMPLATES = ("What is the capital of {}?", "Who wrote {}?", "How do I cook {}?", "Tell me about {}.",
                      "What is the weather like in {}?", "Translate {} into French.", "Who is {}?",
                      "Why is {} famous?", "Can you write a poem about {}?", "What year was {} born?")
_UNKNOWN_FILLERS = ("France", "Hamlet", "pasta", "the moon", "Paris", "rice", "Napoleon", "music", "Japan",
                    "coffee", "a dog", "the ocean", "Mozart", "football", "Berlin", "winter", "chess", "Einstein",
                    "bread", "the internet", "Spain", "a cat", "history", "London", "tea", "Shakespeare")
_UNKNOWN_HELD_OUT = ("Italy", "the sun", "soup", "Beethoven", "Canada", "a horse", "Rome", "science",
                     "Cleopatra", "pizza")
_UNKNOWN_FIXED = ("Tell me a joke.", "What time is it?", "What is two plus two?", "Who are you?",
                  "How are you today?", "What is the meaning of life?", "Write some Python code.", "Hello!")


def ask_unknown(rng, render, held_out: bool = False, colours=None, include=None):
    if rng.random() < 0.25 and not held_out:
        q = rng.choice(_UNKNOWN_FIXED)
    else:
        q = rng.choice(_UNKNOWN_TEMPLATES).format(rng.choice(_UNKNOWN_HELD_OUT if held_out else _UNKNOWN_FILLERS))
    s = random_scene(rng, colours=colours, include=include)
    parts = (render(s, rng), q) if rng.random() < 0.7 else (q,)
    return Sample("unknown", [user(*parts), assistant(UNKNOWN_ANSWER)], UNKNOWN_ANSWER, [s])


FAMILIES: dict[str, Callable] = {
    "describe": ask_describe,
    "attribute": ask_attribute,
    "count": ask_count,
    "exists": ask_exists,
    "position": ask_position,
    "two_images": ask_two_images,
    "multi_turn": ask_multi_turn,
    "description": ask_description,
    "unknown": ask_unknown,
    "follow_up": ask_follow_up,
    "outside": ask_outside,
}
SINGLE_IMAGE = ("describe", "attribute", "count", "exists", "position", "description")


def make_sample(family: str, rng: random.Random, render: Render = render_clean, **kwargs) -> Sample:
    if family not in FAMILIES:
        raise ValueError(f"unknown question family {family!r}; choose from {', '.join(FAMILIES)}")
    return FAMILIES[family](rng, render, **kwargs)
