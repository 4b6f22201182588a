"""Lesson 08 exercise: write BLIP-2's prompt for a question, and let the tiny BLIP-2 answer with it.

The task: a function `make_prompt(question) -> str` that turns "What colour is the circle?" into the
prompt BLIP-2 continues with the answer. `check_make_prompt` asks the tiny BLIP-2 twenty held-out
questions through your prompts and compares its answers with the truth; the prompt style it was
trained on (BLIP-2's own) gets nearly all of them right, anything else far fewer.
"""

from __future__ import annotations

PASS = 0.9


def check_make_prompt(make_prompt, vlm=None, n: int = 20) -> bool:
    """Print a verdict on `make_prompt`; True when the tiny BLIP-2 answers at least 90% right with it."""
    if make_prompt is None:
        print("Not answered yet: set `make_prompt` to your function (question -> prompt) and run the check again.")
        return False
    if not callable(make_prompt):
        print(f"make_prompt should be a function taking a question and returning a prompt, got {type(make_prompt).__name__}.")
        return False
    from ..caption import caption, is_blip2
    from ..models import load_vlm
    from ..tiny_blip2.evaluate import eval_tasks

    vlm = vlm if vlm is not None and is_blip2(vlm) else load_vlm("tiny-blip2")
    tasks = [t for family in ("attribute", "count", "exists", "position") for t in eval_tasks(family, n // 4, seed=808)]
    questions = [t.prompt.removeprefix("Question: ").removesuffix(" Answer:") for t in tasks]
    questions = [q[:1].upper() + q[1:] for q in questions]  # as a person would write it
    try:
        prompts = [make_prompt(q) for q in questions]
    except Exception as e:  # noqa: BLE001 - the learner's code: report, do not crash the notebook
        print(f"make_prompt raised {type(e).__name__}: {e}")
        return False
    if not all(isinstance(p, str) for p in prompts):
        print("make_prompt must return a string for every question.")
        return False
    answers = caption(vlm, [t.image for t in tasks], prompts, batch_size=len(tasks))
    right = sum(a == t.answer for a, t in zip(answers, tasks))
    print(f"{right}/{len(tasks)} answered right with your prompts, e.g. {prompts[0]!r} -> {answers[0]!r} "
          f"(truth {tasks[0].answer!r}).")
    if right >= PASS * len(tasks):
        print("Correct: that is BLIP-2's prompt style, the one this model (and Salesforce's checkpoints) learnt.")
        return True
    print("Not yet: BLIP-2 continues text, so the prompt must end where the answer begins, in the style it was "
          "trained on (look at how the lesson's prompts begin, end, and write the question's first letter).")
    return False
