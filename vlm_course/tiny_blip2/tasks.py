"""What the tiny BLIP-2 is taught and tested on: captions and BLIP-2-style prompted questions about the
shapes world.

BLIP-2 is an image-to-text model: one image in, text out, optionally continuing a prompt. Its
published checkpoints answer questions in the form "Question: what colour is the circle? Answer:",
and caption with no prompt at all. The questions and answers come from the shapes world's own
families (`vlm_course.shapes.questions`), so both tiny models are asked the very same things.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from ..caption import blip2_prompt

from ..shapes.questions import Render, make_sample, render_clean
from ..shapes.world import Scene, random_scene

# family -> weight when drawing training samples: more of what binds a shape to its colour or place
TASKS = {"caption": 1.5, "attribute": 1.5, "count": 1.0, "exists": 1.0, "position": 1.5}
PROMPTED = ("attribute", "count", "exists", "position")


@dataclass
class Task:
    family: str
    image: Image.Image
    prompt: str  # "" for a caption
    answer: str
    scene: Scene

    @property
    def text(self) -> str:
        """The whole training text: the prompt, then the answer the model must continue it with."""
        return f"{self.prompt} {self.answer}" if self.prompt else self.answer


def make_task(family: str, rng: random.Random, render: Render = render_clean) -> Task:
    if family == "caption":
        scene = random_scene(rng)
        return Task("caption", render(scene, rng), "", scene.describe(), scene)
    if family not in PROMPTED:
        raise ValueError(f"unknown BLIP-2 task {family!r}; choose from {', '.join(TASKS)}")
    sample = make_sample(family, rng, render)
    question = " ".join(p["text"] for p in sample.messages[0]["content"] if p["type"] == "text")
    return Task(family, sample.images[0], blip2_prompt(question), sample.answer, sample.scenes[0])
