"""Score a model on the shapes world: exact match on seeded, held-out questions, per family."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from .questions import FAMILIES, Sample, make_sample, render_clean, render_perturbed

# Held-out: evaluation draws from seeds below this; training draws from a generator seeded far above.
EVAL_SEED = 7

# The bars of the tiny model's evaluation (exact match), per question family; `vlm-course eval --strict`
# and the model card hold the tiny model to them.
BARS = {"describe": 0.98, "attribute": 0.98, "count": 0.98, "exists": 0.98, "position": 0.95,
        "two_images": 0.95, "multi_turn": 0.95, "description": 0.95, "unknown": 0.95,
        "follow_up": 0.95, "outside": 0.95}
PERTURBED_BAR = 0.95


def sample_floor(bar: float, n: int, sigmas: float = 3.0) -> float:
    """The lowest accuracy on `n` questions that a model truly at `bar` would still score (bar minus `sigmas`
    binomial standard errors, to the hundredth below). The bars are claims about the full evaluation; a smaller
    sample (the test suite's) holds the model to them through this floor: one place for both, so that a floor
    can never drift from its bar. On 100 questions: 0.98 -> 0.93, 0.95 -> 0.88."""
    import math

    return math.floor(100 * (bar - sigmas * math.sqrt(bar * (1 - bar) / n))) / 100


# The families asked about one image: their pooled accuracy is the "single-image overall" figure.
SINGLE_IMAGE_FAMILIES = ("describe", "attribute", "count", "exists", "position", "description")


@dataclass
class FamilyScore:
    family: str
    correct: int
    total: int
    mistakes: list[tuple[str, str, str]] = field(default_factory=list, repr=False)  # (question, expected, got)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def eval_samples(family: str, n: int, seed: int = EVAL_SEED, perturbed: bool = False,
                 colours: tuple[str, ...] | None = None, include: str | None = None) -> list[Sample]:
    """The same `n` held-out questions of a family every time for a given seed.

    colours and include (see random_scene) draw scenes from another palette, e.g. with pink in every scene."""
    world = "" if colours is None and include is None else f"-{'+'.join(colours or ())}-{include}"
    rng = random.Random(f"{family}-{seed}-{'perturbed' if perturbed else 'clean'}{world}")
    render = render_perturbed if perturbed else render_clean
    kwargs = {"held_out": True} if family == "unknown" else {}
    if world:
        kwargs.update(colours=colours, include=include)
    if family == "outside":  # every kind of picture equally often
        from .outside import KINDS

        return [make_sample(family, rng, render, kind=KINDS[i % len(KINDS)], **kwargs) for i in range(n)]
    return [make_sample(family, rng, render, **kwargs) for _ in range(n)]


def normalise(text: str) -> str:
    return " ".join(text.strip().split())


def evaluate(vlm, families=None, n: int = 100, seed: int = EVAL_SEED, perturbed: bool = False,
             batch_size: int = 32, progress: bool = True, colours: tuple[str, ...] | None = None,
             include: str | None = None) -> dict[str, FamilyScore]:
    """Exact-match accuracy of `vlm` on `n` questions per family (greedy decoding, batched).

    colours and include: scenes from another palette (see eval_samples); default the six colours."""
    families = list(families or FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        from ..errors import VLMCourseError

        raise VLMCourseError(f"Unknown question families {unknown}; choose from {', '.join(FAMILIES)}.")
    scores = {}
    bar = tqdm(total=n * len(families), desc="evaluating" + (" (perturbed)" if perturbed else ""),
               disable=not progress, mininterval=1)
    for family in families:
        samples = eval_samples(family, n, seed, perturbed, colours, include)
        scores[family] = score_samples(vlm, family, samples, batch_size, bar)
    bar.close()
    return scores


def score_samples(vlm, family: str, samples: list[Sample], batch_size: int = 32, bar=None) -> FamilyScore:
    """Exact match of `vlm`'s greedy answers to the samples' answers."""
    from ..chat import generate_batch  # chat sits above shapes; import when used

    score = FamilyScore(family, 0, 0)
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        replies = generate_batch(vlm, [s.prompt for s in chunk], max_new_tokens=80)
        for s, r in zip(chunk, replies):
            ok = normalise(r.text) == normalise(s.answer)
            score.correct += ok
            score.total += 1
            if not ok:
                question = " ".join(p["text"] for p in s.prompt[-1]["content"] if p["type"] == "text")
                score.mistakes.append((question, s.answer, r.text))
        if bar is not None:
            bar.update(len(chunk))
    return score


def format_scores(scores: dict[str, FamilyScore], bars: dict[str, float] | None = None) -> str:
    """A plain-text table: family, correct/total, accuracy (and the bar it must meet, if given)."""
    lines = [f"{'family':<14}{'correct':>12}{'accuracy':>10}" + (f"{'bar':>7}  ok" if bars else "")]
    for name, s in scores.items():
        line = f"{name:<14}{f'{s.correct}/{s.total}':>12}{s.accuracy:>10.1%}"
        if bars and name in bars:
            line += f"{bars[name]:>7.0%}  {'yes' if s.accuracy >= bars[name] else 'NO'}"
        lines.append(line)
    return "\n".join(lines)
