"""Benchmarks for lessons 02 and 03: what batching buys, and what streaming costs.

    measure_batching(vlm, n=16)      # one generate_batch vs n generate calls on the same conversations
    measure_stream_overhead(vlm)     # stream vs generate for the same reply

Both return plain dicts (numbers a notebook can print or plot, and vlm_course.bench can tabulate).
Timings are wall-clock medians after a warm-up call (and the ratio of the fastest runs, which a busy
machine disturbs less); on a busy machine they are noisy.
"""

from __future__ import annotations

import random
import statistics
import time

from tqdm.auto import tqdm

from .chat import generate, generate_batch, stream
from .messages import user
from .shapes import make_sample, random_scene

# A realistic mix: short answers, two-image questions, multi-turn dialogues and long descriptions.
BENCH_FAMILIES = ("describe", "two_images", "multi_turn", "count", "description", "position", "attribute", "exists")


def bench_conversations(n: int = 16, seed: int = 0, families=BENCH_FAMILIES) -> list[list[dict]]:
    """n conversations (prompts without answers) cycling through question families, with 1 or 2 images each."""
    rng = random.Random(seed)
    return [make_sample(families[i % len(families)], rng).prompt for i in range(n)]


def measure_batching(vlm, n: int = 16, max_new_tokens: int = 48, repeats: int = 3, seed: int = 0,
                     conversations=None, progress: bool = True) -> dict:
    """Tokens per second of one generate_batch over n conversations vs n sequential generate calls.

    Greedy, so both produce the same replies (checked: `same_replies`). Tokens are the replies' own
    tokens (up to and including their end token), not padding.
    """
    conversations = conversations or bench_conversations(n, seed)
    generate(vlm, conversations[0], max_new_tokens=4)  # warm-up
    sequential, batched, sequential_cpu, batched_cpu = [], [], [], []
    for _ in tqdm(range(repeats), desc="batching benchmark", disable=not progress):
        start, cpu = time.perf_counter(), time.process_time()
        singles = [generate(vlm, c, max_new_tokens=max_new_tokens) for c in conversations]
        sequential.append(time.perf_counter() - start)
        sequential_cpu.append(time.process_time() - cpu)
        start, cpu = time.perf_counter(), time.process_time()
        batch = generate_batch(vlm, conversations, max_new_tokens=max_new_tokens)
        batched.append(time.perf_counter() - start)
        batched_cpu.append(time.process_time() - cpu)
    tokens = sum(r.usage.completion_tokens for r in singles)
    seq_s, batch_s = statistics.median(sequential), statistics.median(batched)
    return {
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
        "repeats": repeats,
    }


def measure_stream_overhead(vlm, messages=None, max_new_tokens: int = 64, repeats: int = 7,
                            progress: bool = True) -> dict:
    """Wall time of stream (consumed to the end) vs generate for the same reply, medians of `repeats`.

    Calls alternate (generate, stream, generate, ...) so that background load hits both alike.
    """
    if messages is None:
        messages = [user(random_scene(7).draw(size=128), "Describe this image in detail.")]
    generate(vlm, messages, max_new_tokens=max_new_tokens)  # warm-up
    gen_times, stream_times, ttfts, gen_cpu, stream_cpu = [], [], [], [], []
    reply = text = None
    for _ in tqdm(range(repeats), desc="stream overhead", disable=not progress):
        start, cpu = time.perf_counter(), time.process_time()
        reply = generate(vlm, messages, max_new_tokens=max_new_tokens)
        gen_times.append(time.perf_counter() - start)
        gen_cpu.append(time.process_time() - cpu)
        start, cpu = time.perf_counter(), time.process_time()
        s = stream(vlm, messages, max_new_tokens=max_new_tokens)
        text = "".join(s)
        stream_times.append(time.perf_counter() - start)
        stream_cpu.append(time.process_time() - cpu)
        ttfts.append(s.usage.time_to_first_token)
    g, st = statistics.median(gen_times), statistics.median(stream_times)
    return {
        "completion_tokens": reply.usage.completion_tokens,
        "generate_seconds": g,
        "stream_seconds": st,
        "overhead": st / g - 1,
        "overhead_of_fastest_runs": min(stream_times) / min(gen_times) - 1,
        "cpu_overhead": statistics.median(stream_cpu) / statistics.median(gen_cpu) - 1,  # CPU time, all threads
        "stream_time_to_first_token": statistics.median(ttfts),
        "generate_time_to_first_token": reply.usage.time_to_first_token,
        "same_text": text == reply.text,
        "repeats": repeats,
    }
