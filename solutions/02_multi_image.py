"""Notebook 02, exercise: a reference solution, run as a cell after the exercise cell (which holds a placeholder)."""


def add_exchange(history, question, image, reply_text):
    """The history with one exchange added: the user's image and question, then the model's reply."""
    return history + [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": reply_text}]},  # the reply, not the question
    ]
