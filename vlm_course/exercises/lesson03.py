"""Lesson 03 exercise: stream a reply and stop the model as soon as the first sentence is complete.

The learner writes `first_sentence(vlm, messages) -> str`. `check_first_sentence(first_sentence, vlm)`
runs it on two scenes and checks, from what the model itself did: that it ran on those messages (their
image and question), that the text returned is the reply's first sentence, and that the model stopped
within a few forward passes of the '.' (cutting a whole reply afterwards, or leaving the model writing in
a thread, is not stopping). It never shows the expected sentence: the learner's function must find it.
"""

from __future__ import annotations

import weakref

from ..errors import VLMCourseError
from .check import ModelWatch, correct, explain_mismatch, learner_call, matching_call, not_solved, wrong

QUESTION = "Describe this image in detail."
MAX_NEW_TOKENS = 80
# Forward passes allowed after the one that wrote the '.': a streamer that flushes at whitespace sees the '.'
# a token late, and a stop requested from another thread takes effect at the next step (thread_stream: 2 over).
SLACK = 4
_cases: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> its cases, computed once


def _first_end(vlm, ids) -> int | None:
    """How many of the reply's tokens it takes for its text to contain a '.'."""
    for k in range(1, len(ids) + 1):
        if "." in vlm.tokenizer.decode(ids[:k], skip_special_tokens=True):
            return k
    return None


def exercise_cases(vlm, n: int = 2, seeds=range(5, 45)) -> list[tuple[int, list, str, int, int]]:
    """(seed, messages, first sentence, passes it needs, passes of the whole reply) for the first `n` scenes
    whose reply (greedy, this model) has a '.' well before its end; computed once a model."""
    from ..chat import generate, user
    from ..chat_bench import count_forward_passes
    from ..shapes import random_scene

    key = vlm.model
    if key not in _cases:
        found = []
        for seed in seeds:
            messages = [user(random_scene(seed).draw(), QUESTION)]
            full, passes = count_forward_passes(vlm, lambda: generate(vlm, messages, max_new_tokens=MAX_NEW_TOKENS))
            needed = _first_end(vlm, full.token_ids)
            if "." in full.text and needed is not None and passes > needed + SLACK:
                found.append((seed, messages, full.text[: full.text.index(".") + 1], needed, passes))
            if len(found) == n:
                break
        if len(found) < n:
            raise VLMCourseError(f"This model ({vlm.name}) writes no reply with a '.' well before its end for scenes "
                                 f"{seeds.start}-{seeds.stop - 1}: the exercise needs one. Try the tiny model.")
        _cases[key] = found
    return _cases[key]


def check_first_sentence(first_sentence, vlm) -> bool | None:
    """True when `first_sentence(vlm, messages)` returns the reply's first sentence (up to and including its
    first '.') and stops the model there. The placeholder (None, or a function returning None) is "not solved
    yet"; a wrong function raises ExerciseError."""
    if first_sentence is None:
        return not_solved("define first_sentence(vlm, messages) and run the check again.")
    if not callable(first_sentence):
        raise wrong(f"first_sentence should be a function first_sentence(vlm, messages), got "
                    f"{type(first_sentence).__name__}.")
    report = []
    for seed, messages, expected, needed, whole in exercise_cases(vlm):
        with ModelWatch(vlm) as watch:
            got = learner_call("first_sentence(vlm, messages)", first_sentence, vlm, messages)
            stuck = watch.settle()
        if got is None and not watch.calls:
            return not_solved("first_sentence returns None: stream the reply and return its first sentence.")
        if stuck:
            raise wrong("the model is still generating after first_sentence returned: a stream left open keeps "
                        "generate paused mid-reply. Close it (stream.close(), or read it in a `with` block).")
        if matching_call(vlm, watch, messages) is None:
            raise wrong(explain_mismatch(vlm, watch, messages, "first_sentence") +
                        " Pass the function's own `messages` to the model, unchanged.")
        if not isinstance(got, str):
            raise wrong(f"first_sentence should return a str, got {type(got).__name__}.")
        if got != expected:
            if got and expected.startswith(got):
                how = "it stops before the first '.' (the sentence ends with it, '.' included)"
            elif got.startswith(expected):
                how = "it goes on past the first '.': cut right after it"
            else:
                how = "it is not how the model's reply begins: return the streamed text itself, cut after its first '.'"
            raise wrong(f"for scene {seed} first_sentence returned {got!r}: {how}.")
        passes = watch.forward_passes
        if passes > needed + SLACK:
            raise wrong(f"the text is right, but the model ran {passes} forward passes for scene {seed}, while its "
                        f"reply reaches the first '.' after {needed} ({whole} for the whole reply): stop the "
                        "stream as soon as the text holds a '.', instead of reading further.")
        report.append(f"scene {seed}: {passes} forward passes of {whole}")
    return correct("you returned the first sentence and the model stopped there (" + "; ".join(report) + ").")
