"""Results as pandas DataFrames: Jupyter draws them as tables, with no column to line up by hand.

Numbers are rounded to what a measurement on a shared machine can tell (a millisecond, a tenth of a
MB, a percent), so that no 16-digit float reaches the page. The functions take the package's own results
(a `chat.Usage`, rows of `bench.run`, ...) and return a DataFrame; nothing here measures anything.
"""

from __future__ import annotations


def _pd():
    import pandas as pd

    return pd


def _round(value, digits: int):
    return None if value is None else round(float(value), digits)


def usage(*usages, index=None):
    """What each reply cost (`reply.usage`), one row a reply: tokens, milliseconds, tokens a second."""
    rows = []
    for u in usages:
        rows.append({"prompt tokens": u.prompt_tokens, "new tokens": u.completion_tokens,
                     "total ms": _round(1000 * u.seconds, 1),
                     "first token ms": _round(1000 * u.time_to_first_token, 1) if u.time_to_first_token else None,
                     "prefill tokens/s": _round(u.prefill_tokens_per_second, 0),
                     "decode tokens/s": _round(u.decode_tokens_per_second, 0)})
    if index is None:
        index = ["reply"] if len(rows) == 1 else [f"reply {i + 1}" for i in range(len(rows))]
    return _pd().DataFrame(rows, index=index)


def token_counts(counts: dict):
    """`chat.count_tokens` results by name, e.g. {"without splitting": off, "with splitting": on}."""
    keys = ("images", "prompt_tokens", "image_tokens", "fake_tokens", "text_tokens", "image_tokens_per_image",
            "pixel_values_shape")
    def shown(key, value):
        if key == "pixel_values_shape":
            return str(value)  # a shape, not a number
        return int(value) if isinstance(value, float) and value.is_integer() else value

    rows = {name: {k.replace("_", " "): shown(k, c[k]) for k in keys if k in c} for name, c in counts.items()}
    return _pd().DataFrame(rows).T


def benchmark(rows: list[dict]):
    """Rows of `vlm_course.bench.run`, one a configuration; a failed one shows its error."""
    def mb(v):
        return None if v is None else round(v / 1e6, 2)

    records = []
    for r in rows:
        if r.get("error"):
            records.append({"config": r["config"], "error": r["error"]})
            continue
        records.append({"config": r["config"], "weights MB": mb(r.get("model_bytes")),
                        "estimate MB": mb(r.get("estimate_bytes")), "peak MB": mb(r.get("peak_bytes")),
                        "load s": _round(r.get("load_s"), 2),
                        "first token ms": _round(1000 * r["ttft_s"], 1) if r.get("ttft_s") else None,
                        "prefill tokens/s": _round(r.get("prefill_tok_s"), 0),
                        "decode tokens/s": _round(r.get("decode_tok_s"), 0),
                        "exact match": f"{r['quality']:.0%}" if isinstance(r.get("quality"), float) else None,
                        "save/reload": r.get("save_reload")})
    frame = _pd().DataFrame(records).set_index("config")
    return frame.dropna(axis=1, how="all")  # a column nothing measured (no quality off the tiny model) goes


def streaming(cost: dict):
    """`chat_bench.measure_stream_overhead`'s result: generate, thread_stream and stream, one row each."""
    ways = {"generate": "generate", "thread": "thread_stream (thread)", "stream": "stream (greenlet)"}
    first = {"generate": cost["generate_seconds"], "thread": cost["thread_time_to_first_piece"],
             "stream": cost["stream_time_to_first_piece"]}  # generate shows everything at its end
    rows = [{"first text ms": _round(1000 * first[w], 1), "whole reply ms": _round(1000 * cost[f"{w}_seconds"], 1),
             "tokens/s": _round(cost[f"{w}_tokens_per_second"], 0),
             "ms a token (prefill included)": _round(1000 / cost[f"{w}_tokens_per_second"], 2)} for w in ways]
    return _pd().DataFrame(rows, index=list(ways.values()))
