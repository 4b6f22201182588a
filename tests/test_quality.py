"""The shipped model really sees: a floor on a held-out sample of every question family.

The full evaluation (500 questions a family) is `vlm-course eval`; its figures are in the model card.
This smaller sample keeps CI fast and fails for a broken or untrained model: each floor sits about
12-15 points under the shipped model's measured accuracy (a 40-question sample wanders by ~7 points),
and an untrained model scores near zero on most families.
"""

from __future__ import annotations

import pytest

from vlm_course.shapes import FAMILIES
from vlm_course.shapes.evaluate import evaluate

# measured on 500 questions a family (model card): describe 96.6%, attribute 98.0%, count 99.2%, exists 98.6%,
# position 88.2%, two_images 93.0%, multi_turn 97.6%, description 83.6%, unknown 97.2%; perturbed 94.7%
FLOORS = {"describe": 0.85, "attribute": 0.85, "count": 0.87, "exists": 0.85, "position": 0.75,
          "two_images": 0.80, "multi_turn": 0.85, "description": 0.70, "unknown": 0.85}
PERTURBED_FLOOR = 0.82
N = 40


@pytest.fixture(scope="module")
def scores(vlm):
    return evaluate(vlm, n=N, seed=101, progress=False)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_is_answered(scores, family):
    s = scores[family]
    assert s.accuracy >= FLOORS[family], f"{family}: {s.correct}/{s.total}; mistakes: {s.mistakes[:3]}"


def test_perturbed_scenes_are_answered(vlm):
    scores = evaluate(vlm, ["describe", "attribute", "count", "position"], n=20, seed=101, perturbed=True,
                      progress=False)
    correct = sum(s.correct for s in scores.values())
    assert correct / 80 >= PERTURBED_FLOOR, {f: s.mistakes[:2] for f, s in scores.items()}
