"""Notebook 07, exercise: a reference solution, run as a cell after the exercise cell (which holds a placeholder)."""

from vlm_course.images import image_to_data_uri
from vlm_course.shapes import random_scene

body = {
    # "model" may be left out: the server then answers with the one model it serves (GET /v1/models names it).
    "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_to_data_uri(random_scene(3).draw())}},
        {"type": "text", "text": "How many shapes are there?"}]}],
    "temperature": 0,
    "max_tokens": 16,
    "stream": True,
}
