"""Notebook 05, exercise: a reference solution, run as a cell after the exercise cell (which holds a placeholder).

bnb-8bit stores each quantized nn.Linear weight in 1 byte and one float32 scale per output row; every layer
it does not quantize (embeddings, norms, the vision patch convolution, lm_head) stays in the model's dtype,
here float32. The package's estimate applies exactly that layout to the published configuration."""

from vlm_course.memory import estimate

answer = estimate("idefics2-8b", dtype="float32", quant="bnb-8bit").bytes / 1e9  # GB
