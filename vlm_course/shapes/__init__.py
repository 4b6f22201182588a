"""The shapes world: scenes, drawings, questions with their answers, and evaluation."""

from .questions import FAMILIES, SINGLE_IMAGE, UNKNOWN_ANSWER, Sample, detailed_description, make_sample
from .world import COLOURS, POSITIONS, SHAPES, Scene, Thing, draw_scene, perturbed_image, random_scene

__all__ = ["COLOURS", "FAMILIES", "POSITIONS", "SHAPES", "SINGLE_IMAGE", "UNKNOWN_ANSWER", "Sample", "Scene", "Thing",
           "detailed_description", "draw_scene", "make_sample", "perturbed_image", "random_scene"]
