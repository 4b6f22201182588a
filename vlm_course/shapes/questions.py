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

def ask_describe(rng, render, colours=None, include=None):
    s = random_scene(rng, colours=colours, include=include)
    return Sample("describe", [user(render(s, rng), rng.choice(DESCRIBE_QUESTIONS)), assistant(s.describe())],
                  s.describe(), [s])


def ask_attribute(rng, render, colours=None, include=None):
    s = random_scene(rng, colours=colours, include=include)
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
    return Sample("attribute", [user(render(s, rng), q), assistant(a)], a, [s])


def ask_count(rng, render, colours=None, include=None):
    s = random_scene(rng, colours=colours, include=include)
    kind = rng.random()
    if kind < 0.4:
        q, n = rng.choice(("How many shapes are there?", "How many objects are there?")), len(s.things)
    elif kind < 0.7:
        shape = rng.choice(SHAPES)
        q, n = f"How many {shape}s are there?", sum(t.shape == shape for t in s.things)
    else:
        colour = rng.choice([t.colour for t in s.things] if rng.random() < 0.7 else list(colours or COLOURS))
        q, n = f"How many {colour} shapes are there?", sum(t.colour == colour for t in s.things)
    a = NUMBERS[n] + "."
    return Sample("count", [user(render(s, rng), q), assistant(a)], a, [s])


def ask_exists(rng, render, colours=None, include=None):
    s = random_scene(rng, colours=colours, include=include)
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
    a = "yes." if yes else "no."
    return Sample("exists", [user(render(s, rng), q), assistant(a)], a, [s])


def ask_position(rng, render, colours=None, include=None):
    s = random_scene(rng, colours=colours, include=include)
    if rng.random() < 0.9:
        t = rng.choice(s.things)
        q, a = f"Where is the {t.name}?", f"{t.position}."
    else:
        names = {t.name for t in s.things}
        name = rng.choice(sorted({f"{c} {sh}" for c in colours or COLOURS for sh in SHAPES} - names))
        q, a = f"Where is the {name}?", f"there is no {name}."
    return Sample("position", [user(render(s, rng), q), assistant(a)], a, [s])


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


def ask_description(rng, render, colours=None, include=None):
    s = random_scene(rng, colours=colours, include=include)
    a = detailed_description(s)
    return Sample("description", [user(render(s, rng), rng.choice(DETAIL_QUESTIONS)), assistant(a)], a, [s])


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
}
SINGLE_IMAGE = ("describe", "attribute", "count", "exists", "position", "description")


def make_sample(family: str, rng: random.Random, render: Render = render_clean, **kwargs) -> Sample:
    if family not in FAMILIES:
        raise ValueError(f"unknown question family {family!r}; choose from {', '.join(FAMILIES)}")
    return FAMILIES[family](rng, render, **kwargs)
