"""Measurements for lesson 08: the two architectures from their published configurations, and
captioning throughput against batch size.

    compare_architectures()              # blip2-opt-2.7b vs idefics2-8b: parameters, image tokens, bytes
    measure_caption_throughput(vlm)      # captions/s at batch sizes 1, 2, 4, 8, 16; batched == alone
    plot_caption_throughput(rows)

Timings are wall-clock medians after a warm-up call; on a busy machine they are noisy.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from tqdm.auto import tqdm

from .caption import caption, is_blip2

DATA_DIR = Path(__file__).parent / "data"
BLIP2_OPT_2_7B = DATA_DIR / "blip2-opt-2.7b-config.json"  # published config of Salesforce/blip2-opt-2.7b
IDEFICS2_8B = DATA_DIR / "idefics2-8b-config.json"  # published config of HuggingFaceM4/idefics2-8b
BATCH_SIZES = (1, 2, 4, 8, 16)


def parts(model) -> dict[str, int]:
    """Parameters of a model by the part it belongs to: vision, connector, language model."""
    def count(module):
        return sum(p.numel() for p in module.parameters())

    if is_blip2(model):
        connector = count(model.qformer) + model.query_tokens.numel() + count(model.language_projection)
        return {"vision": count(model.vision_model), "connector": connector,
                "language model": count(model.language_model), "total": count(model)}
    inner = model.model  # Idefics2
    return {"vision": count(inner.vision_model), "connector": count(inner.connector),
            "language model": count(inner.text_model) + count(model.lm_head), "total": count(model)}


def image_tokens(config) -> int:
    """Tokens the language model reads for one image (no image splitting)."""
    if config.model_type == "blip-2":
        return config.num_query_tokens
    return config.perceiver_config.resampler_n_latents


def compare_architectures(configs: dict | None = None) -> list[dict]:
    """One row per published configuration: what it is made of and what it weighs (meta device, no memory)."""
    from .memory import estimate, load_config, meta_model

    configs = configs or {"Salesforce/blip2-opt-2.7b": BLIP2_OPT_2_7B, "HuggingFaceM4/idefics2-8b": IDEFICS2_8B}
    rows = []
    for name, path in configs.items():
        config = load_config(path)
        counts = parts(meta_model(config))
        connector = ("Q-Former, {} query tokens".format(config.num_query_tokens) if config.model_type == "blip-2"
                     else "MLP + perceiver, {} latents".format(config.perceiver_config.resampler_n_latents))
        rows.append({"model": name, "connector type": connector, **counts, "image tokens": image_tokens(config),
                     "bf16 bytes": estimate(config, dtype="bfloat16").bytes,
                     "nf4 bytes": estimate(config, dtype="bfloat16", quant="bnb-4bit").bytes})
    return rows


def measure_caption_throughput(vlm, images=None, prompts=None, batch_sizes=BATCH_SIZES, n: int = 32,
                               repeats: int = 3, max_new_tokens: int = 32, progress: bool = True) -> list[dict]:
    """Captions per second when `n` images are captioned `batch_size` at a time, for each batch size.

    Greedy, so every batch size gives the same captions: `identical` compares them with the captions
    made one image at a time (batch size 1). Each figure is the median of `repeats` runs after a warm-up."""
    if images is None:
        from .tiny_blip2.evaluate import eval_tasks

        tasks = eval_tasks("caption", n, seed=21)
        images = [t.image for t in tasks]
    images = list(images)[:n]
    caption(vlm, images[:max(batch_sizes)], prompts, batch_size=max(batch_sizes), max_new_tokens=max_new_tokens)  # warm-up
    rows, alone = [], None
    for size in tqdm(batch_sizes, desc="captioning throughput", disable=not progress):
        times, texts = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            texts = caption(vlm, images, prompts, batch_size=size, max_new_tokens=max_new_tokens)
            times.append(time.perf_counter() - start)
        alone = texts if alone is None and size == 1 else alone
        seconds = statistics.median(times)
        rows.append({"batch size": size, "images": len(images), "seconds": seconds,
                     "captions/s": len(images) / seconds, "identical": alone is not None and texts == alone})
    base = rows[0]["captions/s"]
    for row in rows:
        row["speed-up"] = row["captions/s"] / base
    return rows


def format_throughput(rows: list[dict]) -> str:
    lines = [f"{'batch size':>10}{'captions/s':>12}{'speed-up':>10}  same captions as batch 1"]
    for r in rows:
        lines.append(f"{r['batch size']:>10}{r['captions/s']:>12.1f}{r['speed-up']:>9.2f}x  {'yes' if r['identical'] else 'NO'}")
    return "\n".join(lines)


def plot_caption_throughput(rows: list[dict], title: str = "Captioning throughput against batch size"):
    """Captions per second at each batch size, each point labelled (plots.py's sizes: notebook width, 9 pt+)."""
    from .plots import SMALL, TEXT, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sizes, speeds = [r["batch size"] for r in rows], [r["captions/s"] for r in rows]
    ax.plot(sizes, speeds, marker="o")
    for size, speed in zip(sizes, speeds):
        ax.annotate(f"{speed:.0f}", (size, speed), textcoords="offset points", xytext=(0, 7), ha="center",
                    fontsize=SMALL)
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(s) for s in sizes])
    ax.minorticks_off()  # the log axis's minor ticks sit between batch sizes that were not measured
    ax.set_ylim(0, 1.15 * max(speeds))
    ax.set_xlabel("batch size (images per generate)", fontsize=TEXT)
    ax.set_ylabel("captions per second", fontsize=TEXT)
    ax.set_title(title, fontsize=TEXT + 1)
    ax.tick_params(labelsize=SMALL)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
