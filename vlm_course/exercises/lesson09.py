"""Lesson 09 exercise: mask the labels of a two-turn conversation by hand."""

from __future__ import annotations

from .check import correct, not_solved, wrong

IGNORE = -100


def two_turn_conversation():
    """The exercise's conversation: two images, two questions, two answers."""
    from ..messages import assistant, user
    from ..shapes import random_scene

    first, second = random_scene(901), random_scene(902)
    return [user(first.draw(), "What do we see in this image?"), assistant(first.describe()),
            user("And how about this image?", second.draw()), assistant(second.describe())]


def exercise_input_ids(vlm):
    """The token ids the processor makes of the conversation (one row, no padding), as a list."""
    from ..finetune import ConversationCollator

    return ConversationCollator(vlm.processor)([two_turn_conversation()])["input_ids"][0].tolist()


def check_two_turn_labels(vlm, labels) -> bool | None:
    """True when `labels` (a list or tensor, one per token of exercise_input_ids(vlm)) learns exactly the two
    answers and their <end_of_utterance>, and nothing else. None is "not solved yet"; wrong labels raise
    ExerciseError saying which tokens are wrong."""
    from ..finetune import build_labels

    if labels is None:
        return not_solved("set `labels` to a list with one entry per input id and run the check again.")
    import torch

    ids = exercise_input_ids(vlm)
    try:
        got = [int(x) for x in (labels.reshape(-1).tolist() if isinstance(labels, torch.Tensor) else labels)]
    except (TypeError, ValueError) as e:
        raise wrong(f"expected a list of integers (token ids or {IGNORE}), got {type(labels).__name__}.") from e
    if len(got) != len(ids):
        raise wrong(f"expected {len(ids)} labels, one per input id; got {len(got)}.")
    want = build_labels(torch.tensor([ids]), vlm.processor)[0].tolist()
    if got == want:
        return correct(f"{sum(w != IGNORE for w in want)} of {len(ids)} tokens are learnt, the two answers and "
                       "their <end_of_utterance>; the images, both questions and the template's words are masked.")
    tok = vlm.tokenizer
    wrong_values = [i for i, (g, w) in enumerate(zip(got, want)) if g not in (IGNORE, ids[i])]
    if wrong_values:
        raise wrong(f"a label must be {IGNORE} or the token id at the same position (the model predicts it from the "
                    f"tokens before it; transformers shifts the labels itself). Position {wrong_values[0]} has "
                    f"{got[wrong_values[0]]}.")
    problems = []
    extra = [i for i, (g, w) in enumerate(zip(got, want)) if g != IGNORE and w == IGNORE]
    missing = [i for i, (g, w) in enumerate(zip(got, want)) if g == IGNORE and w != IGNORE]
    if extra:
        tokens = tok.convert_ids_to_tokens([ids[i] for i in extra[:8]])
        problems.append(f"{len(extra)} token(s) are learnt that should be masked, from position {extra[0]}: {tokens}. "
                        "Only the assistant's answers (and their <end_of_utterance>) are learnt: not the images, the user's "
                        "questions, 'Assistant:' itself or the newline after each turn.")
    if missing:
        tokens = tok.convert_ids_to_tokens([ids[i] for i in missing[:8]])
        problems.append(f"{len(missing)} token(s) of an answer are masked, from position {missing[0]}: {tokens}. "
                        "Remember both answers, and the <end_of_utterance> that ends each (the model must learn to stop).")
    raise wrong(" ".join(problems))
