"""Lesson 00 exercise: ask the model how many shapes a scene has, and check it against the scene."""

from __future__ import annotations

from ..shapes import random_scene

NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


def check_count(seed: int, answer) -> bool:
    """True when `answer` (the model's reply text) gives the right number of shapes in scene `seed`."""
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
    print(f"Not quite: {answer!r} does not say {NUMBER_WORDS[truth]!r}. Look at the picture: how many shapes are there?")
    return False
