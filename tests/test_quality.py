"""The shipped model really sees: a floor on a held-out sample of every question family.

The full evaluation (500 questions a family) is `vlm-course eval`; its figures are in the model card.
This smaller sample keeps CI fast (about five seconds) and fails for a broken or untrained model: each floor
sits about 6-7 points under the shipped model's measured accuracy (a 100-question sample wanders by ~2 points),
and an untrained model scores near zero on most families.
"""

from __future__ import annotations

import pytest

from vlm_course.shapes import FAMILIES
from vlm_course.shapes.evaluate import evaluate

# measured on 500 questions a family (model card): describe 99.2%, attribute 99.0%, count 99.4%, exists 99.6%,
# position 99.2%, two_images 96.4%, multi_turn 99.8%, description 99.8%, unknown 99.6%; perturbed 99.0%.
# This sample (seed 101) scored 93% on two_images and 96% on attribute, 99-100% on the rest.
FLOORS = {"describe": 0.93, "attribute": 0.92, "count": 0.92, "exists": 0.93, "position": 0.92,
          "two_images": 0.88, "multi_turn": 0.93, "description": 0.93, "unknown": 0.92}
PERTURBED_FLOOR = 0.90
N = 100


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
