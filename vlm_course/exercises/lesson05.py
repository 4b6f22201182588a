"""Lesson 05 exercise: how many GB do idefics2-8b's weights take with a quantization method?"""

from __future__ import annotations

from ..memory import QUANT_ALIASES, estimate
from ..models import QUANT_METHODS

TOLERANCE = 0.05


def check_weights_gb(method: str, answer, dtype: str = "bfloat16") -> bool:
    """True when `answer` (in GB, 1e9 bytes) is within 5% of the weights of idefics2-8b under `method`.

    The reference is memory.estimate("idefics2-8b", dtype, method): the layers a method does not
    quantize (embeddings, norms, the vision patch convolution, lm_head) stay in `dtype`.
    """
    if method not in QUANT_METHODS and method not in QUANT_ALIASES:
        print(f"Unknown method {method!r}: choose one of {', '.join(QUANT_METHODS)}.")
        return False
    if answer is None:
        print("Not answered yet: set `answer` to your number of GB and run the check again.")
        return False
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        print(f"Expected a number of GB (e.g. 4.2), got {type(answer).__name__}.")
        return False
    truth = estimate("idefics2-8b", dtype=dtype, quant=method).bytes / 1e9
    if abs(answer - truth) <= TOLERANCE * truth:
        print(f"Correct: idefics2-8b with {method} needs {truth:.2f} GB of weights (you said {answer:.2f}).")
        return True
    hint = "too high: which layers shrink, and by how much?" if answer > truth else \
        "too low: did you forget the scales, or the layers that are not quantized (lm_head, embeddings)?"
    print(f"Not quite: {answer:.2f} GB is {hint}")
    return False
