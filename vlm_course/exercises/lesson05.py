"""Lesson 05 exercise: how many GB do idefics2-8b's weights take with a quantization method?

The lesson's 8B table shows every method with bfloat16 for the layers left unquantized; the exercise asks
for another setting (float32 for those layers, as on a CPU), so the answer is worked out, not read off.
The tolerance is tight: 1 byte a parameter for an 8-bit method (8.40 GB) is not the answer (about 9.2 GB
in float32, 8.68 GB in bfloat16), because the scales and the unquantized layers cost bytes too.
"""

from __future__ import annotations

from ..errors import BackendError
from ..memory import QUANT_ALIASES, estimate
from ..models import QUANT_METHODS
from .check import correct, not_solved, wrong

TOLERANCE = 0.01  # naive answers are 3-10% off; rounding to two decimals of a GB is well within 1%


def check_weights_gb(method: str, answer, dtype: str = "bfloat16", config: str = "idefics2-8b") -> bool | None:
    """True when `answer` (in GB, 1e9 bytes) is within 1% of the weights of `config` under `method`, the layers
    it does not quantize (embeddings, norms, the vision patch convolution, lm_head) kept in `dtype`.

    The reference is memory.estimate(config, dtype, method). None is "not solved yet"; a wrong number raises
    ExerciseError with a hint (too high or too low, and what is often forgotten), never the number."""
    if method not in QUANT_METHODS and method not in QUANT_ALIASES:
        raise BackendError(f"Unknown method {method!r}: choose one of {', '.join(QUANT_METHODS)}.")
    if answer is None:
        return not_solved("set `answer` to your number of GB and run the check again.")
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        raise wrong(f"expected a number of GB (e.g. 4.2), got {type(answer).__name__}.")
    truth = estimate(config, dtype=dtype, quant=method).bytes / 1e9
    if abs(answer - truth) <= TOLERANCE * truth:
        return correct(f"{config} with {method} and {dtype} for the rest needs {truth:.2f} GB of weights "
                       f"(you said {answer:.2f}).")
    hint = ("too high: which layers shrink, and by how much?" if answer > truth else
            f"too low: did you forget the scales, or that the layers a method does not quantize (lm_head, the "
            f"embeddings, the norms) stay in {dtype}?")
    raise wrong(f"{answer:.2f} GB is {hint}")
