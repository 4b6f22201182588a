"""Lesson 08 exercise: write BLIP-2's prompt for a question, and let the tiny BLIP-2 answer with it.

The task: a function `make_prompt(question) -> str` that turns "What colour is the circle?" into the
prompt BLIP-2 continues with the answer. `check_make_prompt` asks the tiny BLIP-2 twenty held-out
questions through your prompts and compares its answers with the truth; the prompt style it was
trained on (BLIP-2's own) gets nearly all of them right, anything else far fewer.
"""

from __future__ import annotations

from .check import correct, learner_call, not_solved, wrong

PASS = 0.9


def check_make_prompt(make_prompt, vlm=None, n: int = 20) -> bool | None:
    """True when the tiny BLIP-2 answers at least 90% right with `make_prompt`'s prompts (it runs the model on them).

    The placeholder None is "not solved yet"; a wrong function raises ExerciseError."""
    if make_prompt is None:
        return not_solved("set `make_prompt` to your function (question -> prompt) and run the check again.")
    if not callable(make_prompt):
        raise wrong(f"make_prompt should be a function taking a question and returning a prompt, got "
                    f"{type(make_prompt).__name__}.")
    from ..caption import caption, is_blip2
    from ..models import load_vlm
    from ..tiny_blip2.evaluate import eval_tasks

    vlm = vlm if vlm is not None and is_blip2(vlm) else load_vlm("tiny-blip2")
    tasks = [t for family in ("attribute", "count", "exists", "position") for t in eval_tasks(family, n // 4, seed=808)]
    questions = [t.prompt.removeprefix("Question: ").removesuffix(" Answer:") for t in tasks]
    questions = [q[:1].upper() + q[1:] for q in questions]  # as a person would write it
    prompts = [learner_call("make_prompt(question)", make_prompt, q) for q in questions]
    if all(p is None for p in prompts):
        return not_solved("make_prompt returns None: return the prompt for the question.")
    if not all(isinstance(p, str) for p in prompts):
        raise wrong("make_prompt must return a string for every question.")
    answers = caption(vlm, [t.image for t in tasks], prompts, batch_size=len(tasks))
    right = sum(a == t.answer for a, t in zip(answers, tasks))
    score = (f"{right}/{len(tasks)} answered right with your prompts, e.g. {prompts[0]!r} -> {answers[0]!r} "
             f"(truth {tasks[0].answer!r})")
    if right >= PASS * len(tasks):
        return correct(f"{score}. That is BLIP-2's prompt style, the one this model (and Salesforce's checkpoints) learnt.")
    raise wrong(f"{score}. BLIP-2 continues text, so the prompt must end where the answer begins, in the style it was "
                "trained on (look at how the lesson's prompts begin, end, and write the question's first letter).")
