"""Lesson 02 exercise: write the function that adds one exchange to a chat history, without the
well-known bug that stores the user's text in the assistant's turn."""

from __future__ import annotations

from ..errors import VLMCourseError
from .check import correct, learner_call, not_solved, wrong

QUESTIONS = ("What do we see in this image?", "And how about this image?")


def check_add_exchange(add_exchange) -> bool | None:
    """`add_exchange(history, question, image, reply_text)` must return the history (a list of messages)
    with a user turn (the image, then the question) and an assistant turn (the reply) appended.

    The checker runs it on a real two-turn dialogue. The placeholder (None, or a function returning None)
    is "not solved yet"; a wrong function raises ExerciseError saying which turn is wrong and how."""
    from ..messages import validate
    from ..shapes import random_scene

    if add_exchange is None:
        return not_solved("define add_exchange(history, question, image, reply_text) and run the check again.")
    if not callable(add_exchange):
        raise wrong(f"add_exchange should be a function, got {type(add_exchange).__name__}.")
    first, second = random_scene(101), random_scene(102)
    exchanges = [(QUESTIONS[0], first.draw(size=64), first.describe()),
                 (QUESTIONS[1], second.draw(size=64), second.describe())]
    history = []
    for question, image, reply in exchanges:
        history = learner_call("add_exchange", add_exchange, history, question, image, reply)
        if history is None:
            return not_solved("add_exchange returns None: return the history with the new exchange added.")
    try:
        checked = validate(history, for_generation=False)
    except VLMCourseError as e:
        raise wrong(f"the package refuses the history your function built:\n  {e}") from e
    roles = [m["role"] for m in checked]
    if roles != ["user", "assistant", "user", "assistant"]:
        raise wrong(f"after two exchanges the roles should be user, assistant, user, assistant; got {roles}.")
    for i, (question, image, reply) in enumerate(exchanges):
        user_turn, assistant_turn = checked[2 * i], checked[2 * i + 1]
        said = [p["text"] for p in assistant_turn["content"] if p["type"] == "text"]
        if said != [reply] or len(assistant_turn["content"]) != 1:
            where = " (that is the user's question: the well-known bug)" if question in said else ""
            raise wrong(f"turn {2 * i + 1}: the assistant turn should hold one text part, the model's reply; "
                        f"it holds {said}{where}.")
        kinds = [p["type"] for p in user_turn["content"]]
        images = [p["image"] for p in user_turn["content"] if p["type"] == "image"]
        texts = [p["text"] for p in user_turn["content"] if p["type"] == "text"]
        if texts != [question]:
            raise wrong(f"turn {2 * i}: the user turn should hold the question {question!r}; it holds texts {texts}.")
        if len(images) != 1 or images[0] is not image and images[0] != image:
            raise wrong(f"turn {2 * i}: the user turn should hold the image passed to add_exchange, once; it holds "
                        f"{len(images)} image(s){' (another one)' if len(images) == 1 else ''}.")
        if kinds != ["image", "text"]:
            raise wrong(f"turn {2 * i}: the question comes before the image ({kinds}). Put the image first, then "
                        "the question about it, as the model was trained and as lesson 01's prompts show.")
    return correct("every turn is where it belongs: the image before its question, and the assistant says what "
                   "the model said.")
