"""Notebook 08, exercise: a reference solution, run as a cell after the exercise cell (which holds a placeholder)."""


def make_prompt(question):
    """BLIP-2's own prompt style: it continues the text, so the prompt ends where the answer begins."""
    return f"Question: {question[:1].lower() + question[1:]} Answer:"
