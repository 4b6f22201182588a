"""The GPU check's code path, run on this CPU with the small idefics2-8b-shaped model (no GPU is lent here)."""

from __future__ import annotations

import json

import pytest

from vlm_course import gpu_check
from vlm_course.errors import BackendError


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_on_the_small_model(tmp_path):
    report = gpu_check.run_gpu_check("small", device="cpu", out=tmp_path, progress=False)
    rows = {r["config"]: r for r in report["rows"]}
    assert "CUDA GPU" in rows["bf16+flash_attention_2"]["skipped"]  # says why, measures the rest
    for name in ("bf16+eager", "bf16+sdpa", "bnb-4bit+sdpa"):
        r = rows[name]
        assert "error" not in r, r
        assert r["split_on"]["prompt_tokens"] - r["split_off"]["prompt_tokens"] >= 4 * 64  # 320 vs 64 image tokens
        assert r["split_off"]["new_tokens"] == gpu_check.SIZES["small"]["new_tokens"]
        assert r["batch4"]["decode_tok_s"] > 0 and 0 < r["bound_share_batch1"]
    assert rows["bnb-4bit+sdpa"]["weights_bytes"] < 0.8 * rows["bf16+sdpa"]["weights_bytes"]
    assert rows["bf16+sdpa"]["weights_bytes"] == rows["bf16+sdpa"]["estimate_bytes"]
    assert report["auto"]["quant"].startswith("None: auto: no quantization on cpu")
    saved = json.loads((tmp_path / "gpu-check-small.json").read_text())
    assert saved["rows"][0]["config"] == "bf16+eager"
    assert "| bf16+sdpa |" in (tmp_path / "gpu-check-small.md").read_text()


def test_the_real_size_refuses_a_machine_without_a_gpu(tmp_path):
    with pytest.raises(BackendError, match="--size small"):
        gpu_check.run_gpu_check("real", device="cpu", out=tmp_path)
