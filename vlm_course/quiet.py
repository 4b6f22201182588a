"""Keep library noise out of the lessons, at its source and no wider than it needs to be.

- `short_bars()`: around the package's own model loads and saves, transformers' "Loading weights" and
  "Writing model shards" bars (and any other bar transformers draws meanwhile) appear only once the work
  has taken a second: the tiny
  model loads in a tenth of one, idefics2-8b from disk takes long enough to earn its bar. It goes
  through transformers' own tqdm hook, chained to whatever hook the user set, and restored after.
- `silence_library_noise()`: drops the handful of log records and warnings below, each matched by its
  exact text, with the reason beside it. Every other message of those libraries still shows.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings

# A bar for work that ends within this many seconds never shows (tqdm's `delay`).
SHORT_WORK_SECONDS = 1.0

# logger name -> message prefixes dropped, and why.
NOISE = {
    # torchao ships CUDA-only extensions (MX-FP8, CUTLASS for sm90a); on a machine without CUDA each one
    # logs "Failed to load ... .so" at import, and transformers imports torchao whenever it is installed.
    # torchao's CPU code (the int8 weight-only path lesson 05 uses) does not need them.
    "torchao": ("Failed to load ",),
    # torchao registers its Enums with torch's pytree; torch 2.13 logs a deprecation note for each one
    # at import ("is an Enum subclass and is now natively supported by torch.compile"): torchao's to fix.
    "torch.utils._pytree": ("<enum ",),
    # bitsandbytes tries to fetch an optional faster CPU 4-bit kernel from the Hugging Face Hub through the
    # `kernels` package at import; without it (and offline) it logs this and uses its own CPU kernel, whose
    # answers are the same.
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward",),
    # bitsandbytes 8-bit logs this for every layer on every call with float32 inputs (it casts them to
    # float16, as it says): one line per layer per token would bury lesson 05's output.
    "bitsandbytes.autograd._functions": ("MatMul8bitLt: inputs will be cast",),
}


# (message regex, category, why): warnings filtered out (warnings.filterwarnings, ignore).
WARNINGS = [
    # peft 0.21 reads the deprecated `model.is_gradient_checkpointing` when it wraps a model (lesson 09, and
    # load_vlm(adapter=...)); transformers 5 warns at each read. peft's to update, nothing for the learner to do.
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
]


class _DropPrefixes(logging.Filter):
    """Drops records whose message template starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__("vlm_course.quiet")
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else str(record.msg)
        if message.startswith("%s") and record.args:  # logger.warning("%s", text)
            message = str(record.args[0] if isinstance(record.args, tuple) else record.args)
        return not message.startswith(self.prefixes)


def silence_library_noise() -> None:
    """Install the filters of NOISE and WARNINGS (once; cheap: it imports none of those libraries)."""
    for name, prefixes in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in logger.filters):
            logger.addFilter(_DropPrefixes(prefixes))
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


_lock = threading.Lock()
_depth = 0
_previous_hook = None


def _delayed(factory, args, kwargs):
    kwargs.setdefault("delay", SHORT_WORK_SECONDS)
    if _previous_hook is not None:
        return _previous_hook(factory, args, kwargs)
    return factory(*args, **kwargs)


@contextlib.contextmanager
def short_bars():
    """Inside: transformers' progress bars show only for work over SHORT_WORK_SECONDS.

    Nesting and concurrent loads (the server loads in a thread) share one installed hook; the last to
    leave puts the user's hook (or none) back. transformers.utils.logging.disable_progress_bar() still
    turns every bar off."""
    global _depth, _previous_hook
    from transformers.utils import logging as hf_logging

    with _lock:
        if _depth == 0:
            _previous_hook = hf_logging.set_tqdm_hook(_delayed)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                hf_logging.set_tqdm_hook(_previous_hook)
                _previous_hook = None
