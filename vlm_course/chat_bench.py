"""Benchmarks for lessons 02 and 03: what batching buys, and what streaming costs.

    measure_batching(vlm, n=16)      # one generate_batch vs n generate calls on the same conversations
    measure_batching_workloads(vlm)  # the same for long descriptions, a mix, and two-image comparisons
    measure_stream_overhead(vlm)     # stream (greenlet) and thread_stream (thread) vs generate, same reply

Both return plain dicts (numbers a notebook can print or plot, and vlm_course.bench can tabulate).
Timings are wall-clock medians after a warm-up call (and the ratio of the fastest runs, which a busy
machine disturbs less); on a busy machine they are noisy.
"""

from __future__ import annotations

import random
import statistics
import time

import torch
from tqdm.auto import tqdm

from .chat import generate, generate_batch, prepare, stream
from .errors import GenerationError
from .messages import user
from .shapes import make_sample, random_scene

# A realistic mix: short answers, two-image questions, multi-turn dialogues and long descriptions.
BENCH_FAMILIES = ("describe", "two_images", "multi_turn", "count", "description", "position", "attribute", "exists")


# What batching shares is the decoding steps; what it cannot share is the work done for each image (resizing and
# normalising it, running the vision encoder), which both sides pay in full. The shorter the replies, the more
# that work weighs: these workloads run from long replies to short ones, so that the speed-up of one of them is
# not taken for the speed-up of batching.
BATCH_WORKLOADS = {
    "descriptions": ("description",),  # long replies (18 tokens on average with the tiny model), one image each
    "two_images": ("two_images",),  # "what is the difference?" (13 tokens), two images each
    "mixed": BENCH_FAMILIES,  # mostly short answers (7 tokens; the longest 15), 1.2 images a conversation
}


def bench_conversations(n: int = 16, seed: int = 0, families=BENCH_FAMILIES) -> list[list[dict]]:
    """n conversations (prompts without answers) cycling through question families, with 1 or 2 images each."""
    rng = random.Random(seed)
    return [make_sample(families[i % len(families)], rng).prompt for i in range(n)]


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_forward_passes(vlm, fn):
    """(fn's result, how many times the model's forward ran during it): one pass per decoding step."""
    passes = 0

    def count(module, args, output):
        nonlocal passes
        passes += 1

    handle = vlm.model.register_forward_hook(count)
    try:
        return fn(), passes
    finally:
        handle.remove()


def measure_batching(vlm, n: int = 16, max_new_tokens: int = 48, repeats: int = 3, seed: int = 0,
                     conversations=None, workload: str = "mixed", progress: bool = True) -> dict:
    """Tokens per second of one generate_batch over n conversations vs n sequential generate calls.

    Greedy, so both produce the same replies (checked: `same_replies`). Tokens are the replies' own
    tokens (up to and including their end token), not padding. `workload` names the conversations
    (BATCH_WORKLOADS) unless `conversations` are given.

    It also times the batch's per-image work, which batching cannot share: `preprocess_seconds` (the
    processor: chat templates, resizing and normalising every image, tokenising) and `vision_seconds` (the
    vision encoder and connector on every image); `per_image_share` is their part of the batch's time.
    """
    if conversations is None:
        if workload not in BATCH_WORKLOADS:
            raise GenerationError(f"Unknown batching workload {workload!r}: choose one of {', '.join(BATCH_WORKLOADS)}, "
                                  "or pass your own conversations.")
        conversations = bench_conversations(n, seed, BATCH_WORKLOADS[workload])
    else:
        workload = "given"
    generate(vlm, conversations[0], max_new_tokens=4)  # warm-up
    sequential, batched, sequential_cpu, batched_cpu = [], [], [], []
    for _ in tqdm(range(repeats), desc=f"batching benchmark ({workload})", disable=not progress):
        start, cpu = time.perf_counter(), time.process_time()
        singles = [generate(vlm, c, max_new_tokens=max_new_tokens) for c in conversations]
        sequential.append(time.perf_counter() - start)
        sequential_cpu.append(time.process_time() - cpu)
        start, cpu = time.perf_counter(), time.process_time()
        batch = generate_batch(vlm, conversations, max_new_tokens=max_new_tokens)
        batched.append(time.perf_counter() - start)
        batched_cpu.append(time.process_time() - cpu)
    # What batching shares, counted rather than timed: the decoding steps (forward passes of the model).
    _, sequential_passes = count_forward_passes(vlm, lambda: [generate(vlm, c, max_new_tokens=max_new_tokens)
                                                              for c in conversations])
    _, batch_passes = count_forward_passes(vlm, lambda: generate_batch(vlm, conversations, max_new_tokens=max_new_tokens))
    tokens = sum(r.usage.completion_tokens for r in singles)
    seq_s, batch_s = statistics.median(sequential), statistics.median(batched)
    preprocess_s = _median_seconds(lambda: prepare(vlm, conversations), repeats)
    inputs = prepare(vlm, conversations)
    vision_s = 0.0
    if "pixel_values" in inputs:
        with torch.no_grad():
            vision_s = _median_seconds(
                lambda: vlm.model.get_image_features(inputs["pixel_values"], inputs.get("pixel_attention_mask")), repeats)
    return {
        "workload": workload,
        "conversations": len(conversations),
        "images": [sum(p["type"] == "image" for m in c for p in m["content"]) for c in conversations],
        "completion_tokens": tokens,
        "sequential_seconds": seq_s,
        "batch_seconds": batch_s,
        "sequential_tokens_per_second": tokens / seq_s,
        "batch_tokens_per_second": sum(r.usage.completion_tokens for r in batch) / batch_s,
        "speedup": seq_s / batch_s,
        "speedup_of_fastest_runs": min(sequential) / min(batched),  # less sensitive to a busy machine
        "cpu_seconds_ratio": statistics.median(sequential_cpu) / statistics.median(batched_cpu),  # CPU time, all threads
        "same_replies": [a.text for a in singles] == [b.text for b in batch],
        "longest_reply_tokens": max(r.usage.completion_tokens for r in batch),  # the batch decodes until this one ends
        "sequential_forward_passes": sequential_passes,
        "batch_forward_passes": batch_passes,
        "preprocess_seconds": preprocess_s,
        "vision_seconds": vision_s,
        "per_image_share": (preprocess_s + vision_s) / batch_s,
        "repeats": repeats,
    }


def measure_batching_workloads(vlm, workloads=tuple(BATCH_WORKLOADS), n: int = 16, repeats: int = 3,
                               progress: bool = True, **options) -> dict[str, dict]:
    """measure_batching for each workload in BATCH_WORKLOADS: {name: result}."""
    return {w: measure_batching(vlm, n=n, repeats=repeats, workload=w, progress=progress, **options) for w in workloads}


def plot_batching(results: dict[str, dict]):
    """Left: the speed-up of each workload. Right: where the batch's time goes (per-image work vs the rest).
    Drawn to plots.py's rules: notebook width, 9-point text or more, the legend below the panels."""
    from .plots import SMALL, TEXT, WIDTH, pyplot

    plt = pyplot()
    names = [f"{w}\n{r['completion_tokens'] / r['conversations']:.0f} tokens a reply, "
             f"{sum(r['images']) / r['conversations']:.1f} images" for w, r in results.items()]
    results = dict(zip(names, results.values()))
    legend_inches, height = 0.45, 1.2 + 0.75 * len(names)
    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDTH, height), sharey=True)
    left.barh(names, [results[w]["speedup"] for w in names], color="tab:green", height=0.6)
    for i, w in enumerate(names):
        left.text(results[w]["speedup"], i, f" {results[w]['speedup']:.1f}x", va="center", fontsize=SMALL)
    left.set_xlabel("batched tokens/s ÷ sequential tokens/s", fontsize=TEXT)
    left.set_xlim(0, 1.3 * max(results[w]["speedup"] for w in names))
    parts = [("preprocessing (per image)", "preprocess_seconds", "tab:orange"),
             ("vision encoder (per image)", "vision_seconds", "tab:red")]
    starts = [0.0] * len(names)
    for label, key, color in parts:
        widths = [1000 * results[w][key] for w in names]
        right.barh(names, widths, left=starts, label=label, color=color, height=0.6)
        starts = [a + b for a, b in zip(starts, widths)]
    rest = [1000 * results[w]["batch_seconds"] - s for w, s in zip(names, starts)]
    right.barh(names, rest, left=starts, label="prompt and decoding steps (batched)", color="tab:blue", height=0.6)
    right.set_xlabel("one generate_batch of 16: milliseconds", fontsize=TEXT)
    for ax in (left, right):
        ax.tick_params(labelsize=SMALL)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    left.invert_yaxis()  # the first workload on top (shared with the right panel)
    fig.legend(*right.get_legend_handles_labels(), fontsize=SMALL, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, legend_inches / height, 1, 1), w_pad=1.5)
    return fig


def read_timed(make_stream) -> tuple[object, float, float]:
    """(the stream, seconds to its first piece, seconds to its end) of `make_stream()`, read to the end.

    The clock starts before the stream is made (preparing the inputs counts, as it does for generate) and
    the first piece is the first text the reader gets, whichever way the stream is made."""
    start = time.perf_counter()
    first = None
    with make_stream() as s:
        for _ in s:
            if first is None:
                first = time.perf_counter() - start
    total = time.perf_counter() - start
    return s, total if first is None else first, total


# On a busy CPU, two OpenMP threads made the same generate 2-5x slower in the main thread than in a new thread
# (measured here: 1.9-4.4 s against 0.6-1.8 s for one 31-token reply; with one thread, or OMP_WAIT_POLICY=PASSIVE,
# both took 0.3-1.0 s). That would swamp what streaming costs, so the streaming benchmark runs torch on one thread.
STREAM_BENCH_THREADS = 1


def measure_stream_overhead(vlm, messages=None, max_new_tokens: int = 64, repeats: int = 7,
                            progress: bool = True, threads: int | None = STREAM_BENCH_THREADS) -> dict:
    """Wall time of generate, of thread_stream (TextIteratorStreamer, generate in a thread) and of stream
    (generate in a greenlet), each stream read to the end, for the same reply: medians of `repeats`.

    Calls alternate (generate, thread_stream, stream, generate, ...) so that background load hits all alike.
    `overhead` is stream against generate, `thread_overhead` thread_stream against generate, and
    `greenlet_vs_thread` stream against thread_stream (negative: the greenlet is faster). On a CPU, torch runs
    on `threads` threads meanwhile (None: as it is), and goes back to its setting afterwards.
    """
    previous = torch.get_num_threads()
    if threads and torch.device(vlm.device).type == "cpu":
        torch.set_num_threads(threads)
    try:
        return _measure_stream_overhead(vlm, messages, max_new_tokens, repeats, progress) | {
            "torch_threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(previous)


def _measure_stream_overhead(vlm, messages, max_new_tokens, repeats, progress) -> dict:
    from .streaming import thread_stream

    if messages is None:
        messages = [user(random_scene(7).draw(size=128), "Describe this image in detail.")]
    generate(vlm, messages, max_new_tokens=max_new_tokens)  # warm-up
    read_timed(lambda: thread_stream(vlm, messages, max_new_tokens=max_new_tokens))
    times = {"generate": [], "thread": [], "stream": []}
    cpu = {"generate": [], "stream": []}
    first = {"thread": [], "stream": []}
    ttfts = []
    reply = s = t = None
    for _ in tqdm(range(repeats), desc="stream overhead", disable=not progress):
        start, cpu_start = time.perf_counter(), time.process_time()
        reply = generate(vlm, messages, max_new_tokens=max_new_tokens)
        times["generate"].append(time.perf_counter() - start)
        cpu["generate"].append(time.process_time() - cpu_start)
        t, first_s, total_s = read_timed(lambda: thread_stream(vlm, messages, max_new_tokens=max_new_tokens))
        times["thread"].append(total_s)
        first["thread"].append(first_s)
        cpu_start = time.process_time()
        s, first_s, total_s = read_timed(lambda: stream(vlm, messages, max_new_tokens=max_new_tokens))
        times["stream"].append(total_s)
        cpu["stream"].append(time.process_time() - cpu_start)
        first["stream"].append(first_s)
        ttfts.append(s.usage.time_to_first_token)
    g, th, st = (statistics.median(times[k]) for k in ("generate", "thread", "stream"))
    tokens = reply.usage.completion_tokens
    return {
        "completion_tokens": tokens,
        "generate_seconds": g,
        "stream_seconds": st,
        "thread_seconds": th,
        "overhead": st / g - 1,
        "overhead_of_fastest_runs": min(times["stream"]) / min(times["generate"]) - 1,
        "thread_overhead": th / g - 1,
        "greenlet_vs_thread": st / th - 1,
        "greenlet_vs_thread_of_fastest_runs": min(times["stream"]) / min(times["thread"]) - 1,
        "cpu_overhead": statistics.median(cpu["stream"]) / statistics.median(cpu["generate"]) - 1,  # all threads
        "generate_tokens_per_second": tokens / g,
        "thread_tokens_per_second": tokens / th,
        "stream_tokens_per_second": tokens / st,
        "thread_time_to_first_piece": statistics.median(first["thread"]),
        "stream_time_to_first_piece": statistics.median(first["stream"]),
        "stream_time_to_first_token": statistics.median(ttfts),
        "generate_time_to_first_token": reply.usage.time_to_first_token,
        "same_text": s.text == reply.text,
        "thread_same_text": t.text == reply.text,
        "repeats": repeats,
    }
