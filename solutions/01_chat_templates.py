"""Notebook 01, exercises: reference solutions, run as a cell after the exercise cells (which hold placeholders)."""

from vlm_course.shapes import random_scene

# 1. The conversation for scene 7, written by hand: one user turn, the image first, then the question.
my_messages = [{"role": "user", "content": [{"type": "image", "image": random_scene(7).draw()},
                                            {"type": "text", "text": "What do we see in this image?"}]}]

# 2. idefics2-8b: 64 perceiver latents a block; image splitting makes 5 blocks an image (4 crops + the original).
answer = 3 * 5 * 64
