"""Lesson 03 exercise: stream a reply and stop the model as soon as the first sentence is complete."""

from __future__ import annotations


def check_first_sentence(vlm, first_sentence, seed: int = 5) -> bool:
    """`first_sentence(vlm, messages)` must return the reply's first sentence (up to and including its
    first '.') and stop generation there. The checker counts the model's forward passes to see that it
    stopped early; it prints a verdict and never raises."""
    from ..chat import generate
    from ..messages import user
    from ..shapes import random_scene

    if first_sentence is None:
        print("Not answered yet: define first_sentence(vlm, messages) and run the check again.")
        return False
    messages = [user(random_scene(seed).draw(), "Describe this image in detail.")]
    full = generate(vlm, messages, max_new_tokens=80)
    if "." not in full.text or full.text.index(".") == len(full.text) - 1:
        print(f"This model's reply {full.text!r} has no second sentence, and the check needs one: try another seed "
              "(the tiny model's detailed descriptions always have several).")
        return False
    expected = full.text[: full.text.index(".") + 1]
    calls = [0]

    def count(module, args, output):
        calls[0] += 1

    handle = vlm.model.register_forward_hook(count)
    try:
        got = first_sentence(vlm, messages)
    except Exception as e:  # the learner's code failed: report it, do not stop the notebook
        print(f"Your function raised {type(e).__name__}: {e}")
        return False
    finally:
        handle.remove()
    if got != expected:
        print(f"Not quite: expected {expected!r}, got {got!r}.")
        return False
    if calls[0] >= full.usage.completion_tokens:
        print(f"The text is right, but the model ran {calls[0]} forward passes, as many as the whole reply "
              f"({full.usage.completion_tokens} tokens): close the stream once you have the sentence.")
        return False
    print(f"Correct: {got!r}, and the model stopped after {calls[0]} of {full.usage.completion_tokens} forward passes.")
    return True
