"""The shipped model really sees: a floor on a held-out sample of every question family.

The full evaluation (500 questions a family, bars of 95-98%) is `vlm-course eval`; the figures are in the
model card. This smaller sample keeps CI fast and fails for a broken or untrained model.
"""

from __future__ import annotations

import pytest

from vlm_course.shapes import FAMILIES
from vlm_course.shapes.evaluate import evaluate

FLOOR = 0.85
N = 40


@pytest.fixture(scope="module")
def scores(vlm):
    return evaluate(vlm, n=N, seed=101, progress=False)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_is_answered(scores, family):
    s = scores[family]
    assert s.accuracy >= FLOOR, f"{family}: {s.correct}/{s.total}; mistakes: {s.mistakes[:3]}"


def test_perturbed_scenes_are_answered(vlm):
    scores = evaluate(vlm, ["describe", "attribute", "count", "position"], n=20, seed=101, perturbed=True,
                      progress=False)
    correct = sum(s.correct for s in scores.values())
    assert correct / 80 >= FLOOR, {f: s.mistakes[:2] for f, s in scores.items()}
