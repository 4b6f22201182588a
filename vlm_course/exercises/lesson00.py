"""Lesson 00 exercise: ask the model how many shapes a scene has, and read its reply.

The learner writes `ask_count(vlm, image) -> str`: ask "How many shapes are there?" about `image` and
return the reply's text. `check_count(ask_count, vlm)` calls it on two scenes the learner did not choose
and checks, from what the model itself saw and wrote, that the model ran on that image and that question,
and that the text returned is the model's reply (not a string written by hand). On the tiny model it also
compares the number with the scene.
"""

from __future__ import annotations

from .check import ModelWatch, correct, explain_mismatch, learner_call, matching_call, not_solved, reply_text, wrong

QUESTION = "How many shapes are there?"
SEEDS = (7, 10)  # two and three shapes: one fixed answer cannot fit both
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


def says_number(text: str, n: int) -> bool:
    words = text.lower().replace(".", " ").replace(",", " ").split()
    return NUMBER_WORDS[n] in words or str(n) in words


def check_count(ask_count, vlm) -> bool | None:
    """True when `ask_count(vlm, image)` asks QUESTION about `image` and returns the model's reply text.

    The placeholder (None, or a function returning None) is "not solved yet"; a wrong answer raises ExerciseError."""
    from ..chat import user
    from ..models import is_tiny
    from ..shapes import random_scene

    if ask_count is None:
        return not_solved("write ask_count(vlm, image) and run the check again.")
    if not callable(ask_count):
        raise wrong(f"ask_count should be a function ask_count(vlm, image), got {type(ask_count).__name__}.")
    verdicts = []
    for seed in SEEDS:
        scene = random_scene(seed)
        image = scene.draw()
        with ModelWatch(vlm) as watch:
            text = learner_call("ask_count(vlm, image)", ask_count, vlm, image)
        if text is None:
            return not_solved("ask_count returns None: return the reply's text (reply.text).")
        if not isinstance(text, str):
            raise wrong(f"ask_count should return the reply's text (a str, e.g. reply.text), "
                        f"got {type(text).__name__}.")
        messages = [user(image, QUESTION)]
        call = matching_call(vlm, watch, messages)
        if call is None:
            raise wrong(explain_mismatch(vlm, watch, messages, "ask_count") +
                        f" The exercise asks {QUESTION!r} about the image passed to the function.")
        said = reply_text(vlm, call)
        if text != said:
            raise wrong(f"ask_count returned {text!r}, but the model's reply was something else: return the "
                        "reply's text as it is (reply.text), not a string of your own.")
        n = len(scene.things)
        verdicts.append(f"scene {seed} ({n} shapes): {text!r}" +
                        ("" if not is_tiny(vlm) else " right" if says_number(text, n) else " (the model is wrong here)"))
    note = "" if is_tiny(vlm) else (f" This model ({vlm.name}) never saw the shapes world, so its numbers are not "
                                    "compared with the scenes: look at the pictures yourself.")
    return correct("the model ran on each image with the question, and you returned its reply. "
                   + "; ".join(verdicts) + "." + note)
