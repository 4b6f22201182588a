"""Notebook 09, exercise: a reference solution, run as a cell after the exercise cell (which holds a placeholder).

Run it as a cell after the exercise's: it uses the notebook's `base` (the model) and `ids`."""

IGNORE = -100


def mask_labels(tokenizer, ids):
    """Labels for a rendered conversation, found by hand: an answer starts right after the tokens that spell
    "Assistant:" and runs to its <end_of_utterance>, included; everything else is IGNORE."""
    end = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    labels, learning = [IGNORE] * len(ids), False
    for i, token in enumerate(ids):
        if learning:
            labels[i] = token
            learning = token != end
        elif tokenizer.decode(ids[: i + 1]).endswith("Assistant:"):
            learning = True  # the answer begins with the next token
    return labels


labels = mask_labels(base.tokenizer, ids)  # noqa: F821 - base and ids are the notebook's
