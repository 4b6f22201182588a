"""Lesson 00 exercise: ask the model how many shapes a scene has, and check it against the scene."""

from __future__ import annotations

from ..shapes import random_scene

NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


def check_count(seed: int, answer, vlm=None) -> bool:
    """True when `answer` (the model's reply text) gives the right number of shapes in scene `seed`.

    Only the tiny model knows the shapes world: with another `vlm`, a wrong number is reported as the
    model's, not the learner's, and the check passes when `answer` is that model's reply text."""
    if answer is None:
        print("Not answered yet: set `answer` to the model's reply text and run the check again.")
        return False
    if not isinstance(answer, str):
        print(f"Expected the reply's text (a str, e.g. reply.text), got {type(answer).__name__}.")
        return False
    truth = len(random_scene(seed).things)
    words = answer.lower().replace(".", " ").split()
    if NUMBER_WORDS[truth] in words or str(truth) in words:
        print(f"Correct: scene {seed} has {NUMBER_WORDS[truth]} shape{'s' if truth > 1 else ''}.")
        return True
    if vlm is not None:
        from ..models import is_tiny

        if not is_tiny(vlm):
            print(f"{answer!r} does not say {NUMBER_WORDS[truth]!r}, but this model ({vlm.name}) is not the tiny one, "
                  "which alone was trained on these scenes: your code asked it and read its reply, so that part is "
                  "done. Compare with the picture by eye.")
            return True
    print(f"Not quite: {answer!r} does not say {NUMBER_WORDS[truth]!r}. Look at the picture: how many shapes are there?")
    return False
