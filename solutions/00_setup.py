"""Notebook 00, exercise: a reference solution, run as a cell after the exercise cell (which holds a placeholder)."""

from vlm_course.chat import generate, user


def ask_count(vlm, image):
    """Ask the model how many shapes `image` shows; return the reply's text."""
    return generate(vlm, [user(image, "How many shapes are there?")]).text
