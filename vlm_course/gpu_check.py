"""The GPU check: idefics2-8b's real size on a lent GPU, with random weights (nothing to download).

    vlm-course bench --suite gpu                 # on a GPU: the 8B-shaped model at real size, bf16
    vlm-course bench --suite gpu --size small    # the same code path on any machine, on the small test model
    make gpu-check                               # installs the package (keeping torch), then the above

What it measures, one configuration at a time (one model in memory at a time):
- bf16 with eager, sdpa and flash_attention_2 (where it can run: vlm_course.fit says why not), fp16 + sdpa,
  bitsandbytes nf4 with sdpa (and with flash_attention_2);
- for each: load time (load_vlm from a saved directory, weights straight to the device), real bytes of
  the weights against memory.estimate, prefill time of one image with image splitting off (64 image
  tokens) and on (320), decode tokens/s at batch 1 and at batch 16, peak memory (max_memory_allocated)
  against the model card's published peaks (FINDINGS.md), and decode tokens/s against the memory-bandwidth
  bound (measured bandwidth / bytes of weights read per decoding step, times the batch);
- what dtype, attention and quant="auto" load_vlm would pick on this device, and why.
Replies are noise (random weights): decoding runs a fixed number of tokens (the end token is ignored).
"""

from __future__ import annotations

import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Any

# Published peak GPU memory of idefics2-8b, GB, 20 generations on an H100, image splitting off (model card).
PUBLISHED_PEAK_GB = {"fp32": 38.8, "bf16": 22.2, "fp16": 21.3, "fp16+flash_attention_2": 18.1, "bnb-4bit": 9.2,
                     "bnb-4bit+flash_attention_2": 6.0}
# (name, dtype, attn, quant, published-peak key)
CONFIGURATIONS = [
    ("bf16+eager", "bfloat16", "eager", None, "bf16"),
    ("bf16+sdpa", "bfloat16", "sdpa", None, "bf16"),
    ("bf16+flash_attention_2", "bfloat16", "flash_attention_2", None, None),
    ("fp16+sdpa", "float16", "sdpa", None, "fp16"),
    ("fp16+flash_attention_2", "float16", "flash_attention_2", None, "fp16+flash_attention_2"),
    ("bnb-4bit+sdpa", "bfloat16", "sdpa", "bnb-4bit", "bnb-4bit"),
    ("bnb-4bit+flash_attention_2", "bfloat16", "flash_attention_2", "bnb-4bit", "bnb-4bit+flash_attention_2"),
]
SIZES = {"real": dict(new_tokens=64, batch=16, bandwidth_bytes=2 * 1024**3),
         "small": dict(new_tokens=8, batch=4, bandwidth_bytes=64 * 1024**2)}


def memory_bandwidth(device, nbytes: int, repeats: int = 5) -> float:
    """Bytes per second the device moves in a large copy (each copy reads and writes nbytes)."""
    import torch

    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    del src, dst
    return 2 * nbytes / seconds


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def build_model(size: str, out_dir: Path, device) -> Path:
    """The model to check, saved: idefics2-8b's published config with random bf16 weights ('real'), or the
    small idefics2-8b-shaped test model ('small')."""
    if size == "small":
        from .testmodel import build_test_model

        return build_test_model(out_dir)
    from .bench import random_weights_model

    return random_weights_model("idefics2-8b", out_dir, dtype="bfloat16", device=str(device))


def _timed_generate(vlm, inputs, new_tokens: int) -> dict[str, float]:
    """Seconds to the first token (prefill) and decode tokens/s after it, for exactly new_tokens tokens."""
    import torch

    from .chat import _FirstTokenClock

    clock = _FirstTokenClock()
    _sync(vlm.device)
    start = time.perf_counter()
    with torch.no_grad():
        out = vlm.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=None, pad_token_id=vlm.tokenizer.pad_token_id, streamer=clock)
    _sync(vlm.device)
    seconds = time.perf_counter() - start
    generated = out.shape[1] - inputs["input_ids"].shape[1]
    prefill = (clock.first or time.perf_counter()) - start
    steps = max(generated - 1, 1)
    return {"prefill_s": prefill, "decode_tok_s": steps * out.shape[0] / max(seconds - prefill, 1e-9),
            "new_tokens": generated, "prompt_tokens": inputs["input_ids"].shape[1]}


def measure_configuration(model_dir: Path, name: str, dtype: str, attn: str, quant: str | None, size: str,
                          device, bandwidth: float, image) -> dict[str, Any]:
    """Load one configuration, measure it, free it."""
    import torch

    from .bench import _peak, _reset_peak
    from .chat import prepare, splitting_processor, user
    from .errors import VLMCourseError
    from .memory import estimate, model_bytes
    from .models import load_vlm

    opts = SIZES[size]
    row: dict[str, Any] = {"config": name}
    _reset_peak(device)
    start = time.perf_counter()
    try:
        vlm = load_vlm(model_dir, dtype=dtype, attn=attn, quant=quant, device=str(device))
    except VLMCourseError as e:
        return {**row, "skipped": str(e)[:300]}
    row["load_s"] = time.perf_counter() - start
    try:
        weights = model_bytes(vlm.model)
        row.update(weights_bytes=weights, estimate_bytes=estimate(model_dir, dtype=dtype, quant=quant).bytes)
        messages = [user(image, "Describe this image in detail.")]
        for label, on in (("split_off", False), ("split_on", True)):
            inputs = prepare(vlm, [messages], processor=splitting_processor(vlm, on=on))
            _timed_generate(vlm, inputs, 2)  # warm-up (kernels, caches)
            baseline = _reset_peak(device)
            result = _timed_generate(vlm, inputs, opts["new_tokens"])
            peak = _peak(device)
            row[label] = {**result, "peak_bytes": peak, "peak_above_start_bytes": None if peak is None else peak - baseline}
        batch = prepare(vlm, [messages] * opts["batch"], processor=splitting_processor(vlm, on=False))
        _reset_peak(device)
        row[f"batch{opts['batch']}"] = {**_timed_generate(vlm, batch, opts["new_tokens"]), "peak_bytes": _peak(device)}
        # Decoding one token reads every weight once: a batch-1 step cannot beat bandwidth / weights.
        row["bound_tok_s_batch1"] = bandwidth / weights
        row["bound_share_batch1"] = row["split_off"]["decode_tok_s"] / row["bound_tok_s_batch1"]
        row[f"bound_share_batch{opts['batch']}"] = (row[f"batch{opts['batch']}"]["decode_tok_s"]
                                                    / (opts["batch"] * row["bound_tok_s_batch1"]))
    except (VLMCourseError, RuntimeError, ValueError, AssertionError) as e:
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        del vlm
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def run_gpu_check(size: str = "real", device: str | None = None, out: str | Path = "bench-results",
                  configurations=CONFIGURATIONS, progress: bool = True) -> dict[str, Any]:
    """Build the model, measure every configuration, write gpu-check.json (and .md) into `out`."""
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from .fit import device_facts, dtype_for, flash_attention_problem
    from .models import pick_device
    from .shapes import random_scene

    dev = pick_device(device)
    if size == "real" and dev.type != "cuda":
        from .errors import BackendError

        raise BackendError("The real-size GPU check needs a CUDA GPU (idefics2-8b's bf16 weights are 16.8 GB); "
                           "on this machine run it with --size small to exercise the same code path.")
    facts = device_facts(dev)
    report: dict[str, Any] = {"size": size, "device": facts.name, "capability": facts.capability,
                              "free_bytes": facts.free_bytes, "total_bytes": facts.total_bytes,
                              "torch": torch.__version__, "published_peak_gb": PUBLISHED_PEAK_GB}
    auto_dtype = dtype_for(facts)
    report["auto"] = {"dtype": str(auto_dtype).replace("torch.", ""),
                      "flash_attention_2": flash_attention_problem(facts, auto_dtype) or "can run"}
    report["bandwidth_bytes_per_s"] = memory_bandwidth(dev, SIZES[size]["bandwidth_bytes"])
    image = random_scene(3).draw(640).resize((640, 480), Image.BICUBIC)  # 640x480: splitting makes 5 blocks
    with tempfile.TemporaryDirectory(prefix="vlm-course-gpu-") as tmp:
        start = time.perf_counter()
        model_dir = build_model(size, Path(tmp) / "model", dev)
        report["build_and_save_s"] = time.perf_counter() - start
        from .models import _auto_quant

        try:
            quant, why = _auto_quant(str(model_dir), dev, auto_dtype)
            report["auto"]["quant"] = f"{quant}: {why}"
        except Exception as e:  # a BackendError when nothing fits: report it, measure the rest
            report["auto"]["quant"] = f"{type(e).__name__}: {e}"
        rows = []
        for name, dtype, attn, quant, _ in tqdm(configurations, desc="gpu check", unit="config", disable=not progress):
            rows.append(measure_configuration(model_dir, name, dtype, attn, quant, size, dev,
                                              report["bandwidth_bytes_per_s"], image))
    report["rows"] = rows
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu-check-{size}.json").write_text(json.dumps(report, indent=2, default=str))
    (out / f"gpu-check-{size}.md").write_text(format_report(report) + "\n")
    return report


def format_report(report: dict[str, Any]) -> str:
    """A markdown table of the measured rows, with the published peaks beside."""
    gb = 1e9
    batch = SIZES[report["size"]]["batch"]
    lines = [f"GPU check ({report['size']}): {report['device']}, capability {report['capability']}, torch {report['torch']}; "
             f"measured bandwidth {report['bandwidth_bytes_per_s'] / gb:.0f} GB/s; auto: {report['auto']}",
             "", f"| config | load s | weights GB | estimate GB | prefill ms (split off / on) | prompt tokens (off / on) "
             f"| decode tok/s b1 | share of bound b1 | decode tok/s b{batch} | share of bound b{batch} "
             "| peak GB (split off) | published peak GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    published = {name: key for name, _, _, _, key in CONFIGURATIONS}
    for r in report["rows"]:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['config']} | {r.get('skipped') or r.get('error')} |" + " |" * 10)
            continue
        off, on, b = r["split_off"], r["split_on"], r[f"batch{batch}"]
        key = published.get(r["config"])
        pub = PUBLISHED_PEAK_GB.get(key, "") if key else ""
        lines.append(f"| {r['config']} | {r['load_s']:.1f} | {r['weights_bytes'] / gb:.2f} | {r['estimate_bytes'] / gb:.2f} "
                     f"| {1000 * off['prefill_s']:.0f} / {1000 * on['prefill_s']:.0f} | {off['prompt_tokens']} / {on['prompt_tokens']} "
                     f"| {off['decode_tok_s']:.1f} | {r['bound_share_batch1']:.0%} | {b['decode_tok_s']:.1f} "
                     f"| {r[f'bound_share_batch{batch}']:.0%} | {(off['peak_bytes'] or 0) / gb:.2f} | {pub} |")
    return "\n".join(lines)
