"""Results as DataFrames, rounded to what a measurement can tell (vlm_course/tables.py)."""

from __future__ import annotations

import pandas as pd

from vlm_course import tables
from vlm_course.chat import Usage


def test_usage_shows_milliseconds_and_rates_rounded():
    u = Usage(prompt_tokens=25, completion_tokens=9, seconds=0.20071234567891234, time_to_first_token=0.0627123456789)
    frame = tables.usage(u)
    assert isinstance(frame, pd.DataFrame) and list(frame.index) == ["reply"]
    row = frame.loc["reply"]
    assert row["total ms"] == 200.7 and row["first token ms"] == 62.7
    assert row["prefill tokens/s"] == 399.0 and row["decode tokens/s"] == round(8 / (0.20071234567891234 - 0.0627123456789))
    assert "0.2007123" not in frame.to_string()  # no 16-digit float reaches the page
    assert list(tables.usage(u, u).index) == ["reply 1", "reply 2"]


def test_benchmark_table_keeps_a_failed_configuration_with_its_error():
    rows = [{"config": "fp32", "model_bytes": 3_424_000, "estimate_bytes": 3_424_512, "peak_bytes": None, "load_s": 0.1234,
             "ttft_s": 0.0312345, "prefill_tok_s": 812.345, "decode_tok_s": 301.98, "quality": 0.985, "save_reload": "ok"},
            {"config": "quanto-int4", "error": "generate failed: Cannot set version_counter for inference tensor"}]
    frame = tables.benchmark(rows)
    assert list(frame.index) == ["fp32", "quanto-int4"]
    assert frame.loc["fp32", "weights MB"] == 3.42 and frame.loc["fp32", "first token ms"] == 31.2
    assert frame.loc["fp32", "exact match"] == "98%" and frame.loc["quanto-int4", "error"].startswith("generate failed")
    assert "peak MB" not in frame.columns  # measured by nobody: dropped, not a column of blanks


def test_token_counts_shows_whole_numbers_as_integers(vlm):
    from vlm_course.chat import count_tokens, user
    from vlm_course.shapes import random_scene

    counts = count_tokens(vlm, [user(random_scene(7).draw(), "What do we see in this image?")])
    frame = tables.token_counts({"one image": counts})
    assert frame.loc["one image", "image tokens per image"] == vlm.processor.image_seq_len
    assert "8.0" not in frame.to_string()
