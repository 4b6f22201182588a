"""Notebook 03, exercise: a reference solution, run as a cell after the exercise cell (which holds a placeholder)."""

from vlm_course.chat import stream


def first_sentence(vlm, messages):
    """The reply's first sentence, '.' included; the model stops as soon as it is written."""
    text = ""
    with stream(vlm, messages, max_new_tokens=80) as pieces:  # leaving the block closes the stream: generate stops
        for piece in pieces:
            text += piece
            if "." in text:
                return text[: text.index(".") + 1]
    return text
