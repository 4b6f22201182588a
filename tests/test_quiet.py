"""Library noise stays out of the lessons (vlm_course/quiet.py), and only that noise."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from _need import need  # skips outside CI, fails in CI


def _stderr_of(code: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_importing_the_training_code_prints_nothing():
    # It imports transformers' model classes, which import torchao when installed: before the filters this
    # printed two "Failed to load ...torchao/_C...so" lines and two torch pytree deprecation notes.
    assert _stderr_of("import vlm_course.tiny.train") == ""


def test_bitsandbytes_import_note_about_kernels_is_dropped():
    need("bitsandbytes")
    # On a CPU with AVX512-BF16 bitsandbytes logs "Failed to load CPU gemm_4bit_forward ... pip install kernels"
    # at import (the red block of lesson 05); elsewhere it logs nothing, and this passes either way.
    assert _stderr_of("import vlm_course, bitsandbytes") == ""


def test_loading_the_tiny_model_draws_no_progress_bar():
    err = _stderr_of("from vlm_course.models import load_vlm\n"
                     "vlm = load_vlm(device='cpu')\n"
                     "assert vlm.load_seconds < 30, vlm.load_seconds\n")
    assert "Loading weights" not in err
    assert err == ""


def test_other_messages_of_those_libraries_still_show():
    import vlm_course  # noqa: F401  (installs the filters)

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger("torchao")
    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("Failed to load %s: %s", "/x/_C_mxfp8.so", "no CUDA")
        logger.warning("Skipping import of cpp extensions due to incompatible torch version.")
        logger.warning("%s", "Failed to load the other thing")
    finally:
        logger.removeHandler(handler)
    assert seen == ["Skipping import of cpp extensions due to incompatible torch version."]


def test_short_bars_delays_transformers_bars_and_gives_the_users_hook_back():
    from transformers.utils import logging as hf_logging

    from vlm_course.quiet import SHORT_WORK_SECONDS, short_bars

    calls = []

    def users_hook(factory, args, kwargs):
        calls.append(dict(kwargs))
        return factory(*args, **{**kwargs, "disable": True})

    before = hf_logging.set_tqdm_hook(users_hook)
    try:
        with short_bars():
            with short_bars():  # nested (a load inside a load) keeps one hook
                list(hf_logging.tqdm(range(3), desc="inside"))
            list(hf_logging.tqdm(range(3), desc="still inside"))
        list(hf_logging.tqdm(range(3), desc="after"))
        assert [c.get("desc") for c in calls] == ["inside", "still inside", "after"]
        assert calls[0]["delay"] == calls[1]["delay"] == SHORT_WORK_SECONDS
        assert "delay" not in calls[2]
        assert hf_logging.set_tqdm_hook(users_hook) is users_hook  # the user's hook is in place again
    finally:
        hf_logging.set_tqdm_hook(before)
