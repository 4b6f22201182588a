"""Lesson 02 exercise: write the function that adds one exchange to a chat history, without the
well-known bug that stores the user's text in the assistant's turn."""

from __future__ import annotations

from ..errors import VLMCourseError


def check_add_exchange(add_exchange) -> bool:
    """`add_exchange(history, question, image, reply_text)` must return the history (a list of messages)
    with a user turn (the image, then the question) and an assistant turn (the reply) appended.
    The checker runs it on a real two-turn dialogue and prints a verdict; it never raises."""
    from ..messages import validate
    from ..shapes import random_scene

    if add_exchange is None:
        print("Not answered yet: define add_exchange(history, question, image, reply_text) and run the check again.")
        return False
    first, second = random_scene(101), random_scene(102)
    img1, img2 = first.draw(size=64), second.draw(size=64)
    try:
        history = add_exchange([], "What do we see in this image?", img1, first.describe())
        history = add_exchange(history, "And how about this image?", img2, second.describe())
        checked = validate(history, for_generation=False)
    except VLMCourseError as e:
        print(f"Not quite. The package refuses the history your function built:\n  {e}")
        return False
    except Exception as e:  # the learner's code failed: report it, do not stop the notebook
        print(f"Your function raised {type(e).__name__}: {e}")
        return False
    roles = [m["role"] for m in checked]
    if roles != ["user", "assistant", "user", "assistant"]:
        print(f"Expected roles user, assistant, user, assistant; got {roles}.")
        return False
    for i, (question, img, reply) in enumerate([("What do we see in this image?", img1, first.describe()),
                                               ("And how about this image?", img2, second.describe())]):
        user_turn, assistant_turn = checked[2 * i], checked[2 * i + 1]
        said = [p["text"] for p in assistant_turn["content"] if p["type"] == "text"]
        if said != [reply]:
            where = " (that is the user's question: the well-known bug)" if question in said else ""
            print(f"Turn {2 * i + 1}: the assistant should say {reply!r} but says {said}{where}.")
            return False
        images = [p["image"] for p in user_turn["content"] if p["type"] == "image"]
        texts = [p["text"] for p in user_turn["content"] if p["type"] == "text"]
        if images != [img] or texts != [question]:
            print(f"Turn {2 * i}: the user turn should hold the image and {question!r}; it holds {len(images)} "
                  f"image(s) and {texts}.")
            return False
    print("Correct: every turn is where it belongs, and the assistant says what the model said.")
    return True
