"""Score a BLIP-2 on the shapes world: exact match on seeded, held-out captions and prompted questions."""

from __future__ import annotations

import random

from tqdm.auto import tqdm

from ..shapes.evaluate import EVAL_SEED, FamilyScore, normalise
from ..shapes.questions import render_clean, render_perturbed
from .tasks import TASKS, Task, make_task

BARS = {"caption": 0.97, "attribute": 0.95, "count": 0.95, "exists": 0.95, "position": 0.95, "perturbed": 0.95}


def generate_answers(model, processor, tasks: list[Task], batch_size: int = 32) -> list[str]:
    from ..caption import blip2_generate

    model.eval()
    replies = []
    for i in range(0, len(tasks), batch_size):
        chunk = tasks[i:i + batch_size]
        replies += blip2_generate(model, processor, [t.image for t in chunk], [t.prompt for t in chunk])
    return replies


def eval_tasks(family: str, n: int, seed: int = EVAL_SEED, perturbed: bool = False) -> list[Task]:
    """The same `n` held-out tasks of a family every time for a given seed ("perturbed": a mix of all)."""
    rng = random.Random(f"blip2-{family}-{seed}-{'perturbed' if perturbed else 'clean'}")
    render = render_perturbed if perturbed else render_clean
    if family == "perturbed":
        return [make_task(list(TASKS)[i % len(TASKS)], rng, render_perturbed) for i in range(n)]
    return [make_task(family, rng, render) for _ in range(n)]


def evaluate_blip2(vlm, families=None, n: int = 500, seed: int = EVAL_SEED, batch_size: int = 32,
                   progress: bool = True) -> dict[str, FamilyScore]:
    """Exact match per family (TASKS, then "perturbed": the families on perturbed scenes), greedy."""
    families = list(families or [*TASKS, "perturbed"])
    scores = {}
    bar = tqdm(total=n * len(families), desc="evaluating tiny BLIP-2", disable=not progress, mininterval=1)
    for family in families:
        tasks = eval_tasks(family, n, seed)
        score = FamilyScore(family, 0, 0)
        for i in range(0, n, batch_size):
            chunk = tasks[i:i + batch_size]
            for t, reply in zip(chunk, generate_answers(vlm.model, vlm.processor, chunk, batch_size)):
                ok = normalise(reply) == normalise(t.answer)
                score.correct += ok
                score.total += 1
                if not ok:
                    score.mistakes.append((t.prompt or "(caption)", t.answer, reply))
            bar.update(len(chunk))
        scores[family] = score
    bar.close()
    return scores


def scores_record(scores: dict[str, FamilyScore]) -> dict:
    """Scores as JSON-ready data, with a few mistakes a family (for the model card)."""
    return {f: {"correct": s.correct, "total": s.total, "accuracy": s.accuracy,
                "mistakes": [dict(zip(("prompt", "expected", "got"), m)) for m in s.mistakes[:5]]}
            for f, s in scores.items()}


def cli_eval(vlm, args) -> int:
    """`vlm-course eval --model tiny-blip2`: the table of captions, prompted families and perturbed scenes."""
    import json

    from ..errors import VLMCourseError
    from ..shapes.evaluate import format_scores

    families = args.families.split(",") if args.families else [*TASKS] + ([] if args.no_perturbed else ["perturbed"])
    unknown = [f for f in families if f not in [*TASKS, "perturbed"]]
    if unknown:
        raise VLMCourseError(f"Unknown BLIP-2 task families {unknown}; choose from {', '.join([*TASKS, 'perturbed'])}.")
    scores = evaluate_blip2(vlm, families, n=args.n, seed=args.seed, batch_size=args.batch_size)
    print(f"Exact match on {args.n} held-out images per family ({vlm.name}); 'perturbed' mixes the families "
          "on scenes drawn at 256 px with a tinted background, jitter and JPEG 75:")
    print(format_scores(scores, BARS))
    if args.show_mistakes:
        for f, s in scores.items():
            for q, want, got in s.mistakes[: args.show_mistakes]:
                print(f"  [{f}] {q!r}: expected {want!r}, got {got!r}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(scores_record(scores), fh, indent=2)
    ok = all(s.accuracy >= BARS.get(f, 0) for f, s in scores.items())
    return 0 if ok or not args.strict else 1
