"""Measure configurations of a model: load time, speed, peak memory, real bytes and answer quality.

    rows = run(["fp32", "bf16", "bnb-4bit"], n=20)    # one dict per configuration
    save(rows, "bench-results", "quant")              # CSV, JSON and a PNG of memory vs quality vs speed

A configuration is a spec like "bf16", "bnb-4bit", "fp32+eager" or "bf16+sdpa+quanto-int8":
a dtype, an attention backend and a quantization method joined by "+", each optional.

Peak memory. On a GPU: torch.cuda.max_memory_allocated, reset before loading. On the CPU: the
process's peak resident set (VmHWM). A process never gives all freed memory back to the system,
so by default every configuration runs in a fresh Python process (`isolate=True`) and its peak
is its own. In-process runs (`isolate=False`, quicker) reset the peak counter through
/proc/self/clear_refs and report the rise above the resident size before loading, which can
undercount when a configuration reuses memory an earlier one freed: the column says which.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import BackendError, VLMCourseError
from .models import ATTENTION_BACKENDS, QUANT_METHODS, TINY_MODEL_DIR, default_model_id
from .quiet import short_bars

DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16",
                 "float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "auto": "auto"}
SUITES = {
    "quant": ["fp32", "bf16", "fp16", "bnb-8bit", "bnb-4bit", "quanto-int8", "quanto-int4", "quanto-float8",
              "torchao-int8"],
    "attention": ["eager", "sdpa", "flex_attention", "flash_attention_2"],  # those available here
}
QUESTION = "What do we see in this image?"
COLUMNS = ["config", "dtype", "attn", "quant", "device", "load_s", "first_call_s", "ttft_s", "prefill_tok_s",
           "decode_tok_s", "peak_bytes", "peak_kind", "model_bytes", "estimate_bytes", "quality", "quality_n",
           "save_reload", "answer", "answer_tokens", "error"]


@dataclass
class Setup:
    """One configuration to measure."""

    name: str
    dtype: str = "auto"
    attn: str = "auto"
    quant: str | None = None


def parse_setup(spec: str) -> Setup:
    """'bf16+sdpa+bnb-4bit' -> Setup(dtype='bfloat16', attn='sdpa', quant='bnb-4bit')."""
    setup = Setup(spec)
    for part in filter(None, spec.strip().split("+")):
        if part in DTYPE_ALIASES:
            setup.dtype = DTYPE_ALIASES[part]
        elif part in ATTENTION_BACKENDS:
            setup.attn = part
        elif part in QUANT_METHODS:
            setup.quant = part
        else:
            raise BackendError(f"Unknown part {part!r} in configuration {spec!r}. A configuration joins with '+' "
                               f"a dtype ({', '.join(k for k in DTYPE_ALIASES if len(k) <= 4)}), an attention backend "
                               f"({', '.join(ATTENTION_BACKENDS)}) and a quantization ({', '.join(QUANT_METHODS)}).")
    return setup


def suite(name: str, device: str | None = None) -> list[str]:
    """The configurations of a suite ('quant', 'attention', 'all'); attention keeps what runs here."""
    from .models import available_attention, pick_device

    if name == "all":
        return suite("quant", device) + suite("attention", device)
    if name not in SUITES:
        raise BackendError(f"Unknown suite {name!r}. Choose quant, attention or all.")
    if name == "attention":
        here = available_attention(pick_device(device))
        return [a for a in SUITES["attention"] if a in here]
    return list(SUITES[name])


# ---------------------------------------------------------------- memory counters

def _rss_bytes(field: str = "VmRSS") -> int | None:
    """A line of /proc/self/status in bytes (Linux); None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak(device) -> int:
    """Start a new peak; return the baseline the peak is measured from."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:  # Linux >= 4.0: writing 5 resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _rss_bytes() or 0


def _peak(device) -> int | None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _rss_bytes("VmHWM")


# ---------------------------------------------------------------- one configuration

def measure(setup: Setup | str, model_id: str | None = None, *, device: str | None = None, n: int = 20,
            families=("describe", "count"), max_new_tokens: int = 32, repeats: int = 3,
            check_save: bool = True, isolated: bool = False, quality: bool = True) -> dict[str, Any]:
    """Load one configuration and measure it (in this process). Returns one row (see COLUMNS)."""
    import gc

    import torch

    from .chat import generate, user
    from .memory import estimate, model_bytes
    from .models import load_vlm, pick_device
    from .shapes import random_scene
    from .shapes.evaluate import evaluate

    setup = parse_setup(setup) if isinstance(setup, str) else setup
    model_id = str(model_id or default_model_id())
    dev = pick_device(device)
    row: dict[str, Any] = {"config": setup.name, "device": str(dev)}
    gc.collect()
    baseline = _reset_peak(dev)
    vlm = load_vlm(model_id, dtype=setup.dtype, attn=setup.attn, quant=setup.quant, device=device)
    row.update(dtype=str(vlm.dtype).replace("torch.", ""), attn=vlm.attn, quant=vlm.quant or "",
               load_s=vlm.load_seconds, model_bytes=model_bytes(vlm.model))
    config = copy.deepcopy(vlm.model.config)
    if hasattr(config, "quantization_config"):  # the estimate applies the quantization itself
        del config.quantization_config
    row["estimate_bytes"] = estimate(config, dtype=vlm.dtype, quant=vlm.quant).bytes

    messages = [user(random_scene(0).draw(), QUESTION)]
    first = generate(vlm, messages, max_new_tokens=max_new_tokens)  # warm-up; flex_attention compiles here
    row["first_call_s"] = first.usage.seconds
    usages = [generate(vlm, messages, max_new_tokens=max_new_tokens).usage for _ in range(repeats)]

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    row.update(ttft_s=median(u.time_to_first_token for u in usages),
               prefill_tok_s=median(u.prefill_tokens_per_second for u in usages),
               decode_tok_s=median(u.decode_tokens_per_second for u in usages),
               answer=first.text, answer_tokens=" ".join(map(str, first.token_ids)))
    if quality and n > 0:
        scores = evaluate(vlm, list(families), n=n, progress=False)
        correct, total = sum(s.correct for s in scores.values()), sum(s.total for s in scores.values())
        row.update(quality=correct / total, quality_n=total)
    peak = _peak(dev)
    row["peak_bytes"] = None if peak is None else (peak if isolated and dev.type != "cuda" else peak - baseline)
    row["peak_kind"] = ("cuda max_memory_allocated" if dev.type == "cuda" else
                        "process peak RSS (fresh process)" if isolated else "peak RSS rise (in-process)")
    if check_save:
        row["save_reload"] = _save_reload(vlm, messages, first.text, max_new_tokens, device)
    del vlm
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _save_reload(vlm, messages, expected: str, max_new_tokens: int, device) -> str:
    """'yes' if the model saves, reloads and answers the same; otherwise 'no: why'."""
    from .chat import generate
    from .models import load_vlm, save_vlm

    with tempfile.TemporaryDirectory() as tmp:
        try:
            save_vlm(vlm, tmp)
            again = load_vlm(tmp, dtype=vlm.dtype, attn=vlm.attn, device=device)
        except VLMCourseError as e:
            return f"no: {str(e).split(':')[0]}"
        except Exception as e:  # a library refusing: report it in the table, do not stop the benchmark
            return f"no: {type(e).__name__}: {str(e)[:80]}"
        text = generate(again, messages, max_new_tokens=max_new_tokens).text
    return "yes" if text == expected else "saved, but the reloaded answer differs"


# ---------------------------------------------------------------- many configurations

def _measure_in_fresh_process(spec: str, model_id: str, options: dict) -> dict:
    request = json.dumps({"spec": spec, "model_id": model_id, "options": options})
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    proc = subprocess.run([sys.executable, "-m", "vlm_course.bench", "--worker", request],
                          capture_output=True, text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"config": spec, "error": f"worker exited {proc.returncode}: {tail[0][:200]}"}


def run(configs, model_id: str | None = None, *, isolate: bool = True, progress: bool = True,
        **options) -> list[dict[str, Any]]:
    """Measure each configuration (specs or a suite name); a failing one gets an 'error' and the rest go on."""
    from tqdm.auto import tqdm

    if isinstance(configs, str):
        configs = suite(configs, options.get("device")) if configs in (*SUITES, "all") else configs.split(",")
    model_id = str(model_id or default_model_id())
    for spec in configs:
        parse_setup(spec)  # fail before measuring anything
    rows = []
    for spec in tqdm(configs, desc="benchmark", unit="config", disable=not progress):
        if isolate:
            row = _measure_in_fresh_process(spec, model_id, options)
        else:
            try:
                row = measure(spec, model_id, **options)
            except (VLMCourseError, RuntimeError, ImportError, ValueError) as e:
                row = {"config": spec, "error": f"{type(e).__name__}: {str(e)[:200]}"}
        rows.append({c: row.get(c) for c in COLUMNS})
    return rows


def save(rows: list[dict], out_dir: str | os.PathLike = "bench-results", name: str = "bench",
         title: str | None = None) -> dict[str, Path]:
    """Write rows as CSV and JSON, and plot them; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / f"{name}.csv", "json": out / f"{name}.json", "png": out / f"{name}.png"}
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    paths["json"].write_text(json.dumps(rows, indent=2))
    plot(rows, title=title or name).savefig(paths["png"], dpi=110, bbox_inches="tight")
    return paths


def load_results(path: str | os.PathLike) -> list[dict]:
    """Rows saved by save() (the .json file)."""
    return json.loads(Path(path).read_text())


def plot(rows: list[dict], title: str = "benchmark"):
    """Memory, speed and quality of each configuration, side by side; returns the figure (vlm_course.plots)."""
    from .plots import benchmark

    return benchmark(rows, title)


def format_rows(rows: list[dict]) -> str:
    """A plain-text table of the main columns."""
    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    lines = [f"{'config':<16}{'weights':>11}{'estimate':>11}{'peak':>11}{'load s':>8}{'ttft ms':>9}"
             f"{'prefill/s':>10}{'decode/s':>9}{'quality':>9}  save/reload"]
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['config']:<16}error: {r['error']}")
            continue
        mb = lambda v: f"{v / 1e6:.2f} MB" if isinstance(v, (int, float)) else "-"  # noqa: E731
        q = f"{r['quality']:.0%}" if isinstance(r.get("quality"), float) else "-"
        ttft = num(r["ttft_s"] * 1000 if r.get("ttft_s") else None, ".1f")
        lines.append(f"{r['config']:<16}{mb(r['model_bytes']):>11}{mb(r['estimate_bytes']):>11}{mb(r['peak_bytes']):>11}"
                     f"{num(r['load_s'], '.2f'):>8}{ttft:>9}{num(r['prefill_tok_s'], '.0f'):>10}"
                     f"{num(r['decode_tok_s'], '.0f'):>9}{q:>9}  {r.get('save_reload') or '-'}")
    return "\n".join(lines)


def to_dataframe(rows: list[dict], baseline: str = "fp32"):
    """The main columns as a pandas DataFrame, one row per configuration (Jupyter shows it as a table that
    does not wrap): sizes in MB, the weights as a share of the `baseline` configuration's, times in ms,
    quality in percent; a configuration that failed keeps its error and empty numbers."""
    try:
        import pandas as pd
    except ImportError:
        from .errors import missing_extra

        raise missing_extra("pandas", "course") from None

    def number(v, scale=1.0, digits=1):
        return round(v * scale, digits) if isinstance(v, (int, float)) else None

    base = next((r["model_bytes"] for r in rows if r["config"] == baseline and not r.get("error")), None)
    records = []
    for r in rows:
        weights = r.get("model_bytes")
        records.append({
            "config": r["config"],
            "weights MB": number(weights, 1e-6, 2),
            f"% of {baseline}": number(weights / base, 100, 1) if weights and base else None,
            "estimate off %": number(r["estimate_bytes"] / weights - 1, 100, 2) if weights and r.get("estimate_bytes") else None,
            "peak MB": number(r.get("peak_bytes"), 1e-6, 1),
            "load s": number(r.get("load_s"), 1, 2),
            "TTFT ms": number(r.get("ttft_s"), 1000, 1),
            "prefill tok/s": number(r.get("prefill_tok_s"), 1, 0),
            "decode tok/s": number(r.get("decode_tok_s"), 1, 0),
            "quality %": number(r.get("quality"), 100, 0),
            "save/reload": r.get("save_reload") or "",
            "error": r.get("error") or "",
        })
    table = pd.DataFrame.from_records(records).set_index("config")
    if not table["error"].any():
        table = table.drop(columns="error")
    return table


# ---------------------------------------------------------------- random weights at any scale

def random_weights_model(config: str, out_dir: str | os.PathLike, dtype: str = "bfloat16",
                         device: str | None = None) -> Path:
    """Save a model of the given architecture ('tiny', 'idefics2-8b', a config path) with random weights.

    No download. A model shaped like a published one ('idefics2-8b') gets that model's processor as
    published (image splitting, sizes, image tokens: vlm_course.testmodel) around a small tokenizer, so
    prompt lengths and image cost are the real model's; other configs reuse the tiny model's processor,
    set to the architecture's image size and number of image tokens. Answers are noise; memory and speed
    are those of the real size.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    from .memory import load_config
    from .models import pick_device, pick_dtype

    cfg = load_config(config)
    processor = random_weights_processor(config, cfg)
    dev = pick_device(device)
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForImageTextToText.from_config(cfg, dtype=pick_dtype(dtype, dev))
    end = processor.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    model.generation_config.eos_token_id = [end]
    out = Path(out_dir)
    with short_bars():  # a bar only when the save takes over a second (idefics2-8b's 17 GB does)
        model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    return out


def random_weights_processor(config, cfg):
    """The processor for a random-weight model of `config` (see random_weights_model); sets cfg's image
    and pad token ids to the processor's tokenizer (the text vocabulary stays as configured)."""
    from transformers import AutoProcessor

    from .testmodel import LIKE, build_processor

    like = next((name for name in LIKE if str(config) in (name, str(LIKE[name]), f"HuggingFaceM4/{name}")), None)
    if like:
        processor = build_processor(like)
    else:
        processor = AutoProcessor.from_pretrained(TINY_MODEL_DIR)
        side = cfg.vision_config.image_size
        processor.image_processor.size = {"longest_edge": side, "shortest_edge": side}
        processor.image_seq_len = cfg.perceiver_config.resampler_n_latents
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    if cfg.image_token_id != image_token:
        cfg.image_token_id = image_token
        cfg.text_config.pad_token_id = processor.tokenizer.pad_token_id
    return processor


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlm-course bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  vlm-course bench --suite quant\n"
                                       "  vlm-course bench --configs fp32,bf16+sdpa,bnb-4bit --n 50\n"
                                       "  vlm-course bench --suite chat --repeats 5\n"
                                       "  vlm-course bench --suite notebooks --notebooks 05,07\n"
                                       "  vlm-course bench --config idefics2-8b --random-weights --configs bf16,bnb-4bit"
                                       "   (on a GPU)")
    p.add_argument("--model", default=None, help="hub id or directory (default: $VLM_COURSE_MODEL or the tiny model)")
    p.add_argument("--config", default=None, help="with --random-weights: 'tiny', 'idefics2-8b' or a config path")
    p.add_argument("--random-weights", action="store_true", help="build --config with random weights (no download)")
    p.add_argument("--suite", default="quant",
                   choices=["quant", "attention", "all", "chat", "gpu", "notebooks", "notebook-output"],
                   help="chat: generate_batch vs sequential generate, and stream, thread_stream and generate "
                        "(lessons 02-03); "
                        "gpu: idefics2-8b at real size with random weights (vlm_course/gpu_check.py); "
                        "notebooks: each notebook's peak memory, its whole process tree (vlm_course/notebook_memory.py); "
                        "notebook-output: each notebook's stderr outputs and progress bars (vlm_course/notebook_output.py)")
    p.add_argument("--notebooks", default=None,
                   help="with --suite notebooks or notebook-output: numbers or paths, e.g. 05,07 (default: all)")
    p.add_argument("--limit-gb", type=float, default=2.0,
                   help="with --suite notebooks: the memory each notebook's kernel is told it has and its process "
                        "tree must stay under (Binder: 2)")
    p.add_argument("--size", default="real", choices=["real", "small"],
                   help="with --suite gpu: 'small' runs the same check on the small test model (any machine)")
    p.add_argument("--configs", default=None, help="comma-separated specs, e.g. fp32,bf16+sdpa,bnb-4bit (overrides --suite)")
    p.add_argument("--device", default=None)
    p.add_argument("--n", type=int, default=20, help="questions per family for answer quality (0: skip)")
    p.add_argument("--families", default="describe,count")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=None,
                   help="timed generations after the warm-up one (default 3; --suite chat: 9 batching and 31 "
                        "streaming calls, as medians of few calls swing on a busy machine)")
    p.add_argument("--in-process", action="store_true", help="measure all configurations in this process (quicker; "
                                                             "peak memory is then a rise, not a process peak)")
    p.add_argument("--no-save-check", action="store_true", help="skip the save and reload check")
    p.add_argument("--out", default="bench-results", help="folder for the CSV, JSON and PNG")
    p.add_argument("--name", default=None, help="file name stem (default: the suite)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.worker:  # one configuration in this fresh process; the row goes to stdout as JSON
            request = json.loads(args.worker)
            row = measure(request["spec"], request["model_id"], isolated=True, **request["options"])
            print(json.dumps(row))
            return 0
        return _run_cli(args)
    except VLMCourseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run_cli(args) -> int:
    if args.suite == "chat" and not args.configs:
        return _run_chat(args)
    if args.suite == "notebooks" and not args.configs:
        from .notebook_memory import run_cli

        return run_cli(args.notebooks, args.model, args.out, args.name, timeout=900, limit_bytes=int(args.limit_gb * 1e9))
    if args.suite == "notebook-output":  # stderr outputs and progress bars of every notebook (vlm_course/notebook_output.py)
        from .notebook_memory import find_notebooks
        from .notebook_output import main as notebook_output

        return notebook_output([str(p) for p in find_notebooks(args.notebooks)]
                               + ["--json", str(Path(args.out) / f"{args.name or 'notebook-output'}.json")]
                               + (["--model", args.model] if args.model else []))
    if args.suite == "gpu":
        from .gpu_check import format_report, run_gpu_check

        print(format_report(run_gpu_check(args.size, args.device, args.out)))
        print(f"wrote {Path(args.out) / f'gpu-check-{args.size}.json'} and .md")
        return 0
    configs = args.configs.split(",") if args.configs else suite(args.suite, args.device)
    name = args.name or (args.suite if not args.configs else "bench")
    options = dict(device=args.device, n=args.n, families=args.families.split(","), max_new_tokens=args.max_new_tokens,
                   repeats=args.repeats or 3, check_save=not args.no_save_check)
    with tempfile.TemporaryDirectory() as tmp:
        model_id = args.model
        if args.random_weights or args.config:
            if not (args.random_weights and args.config):
                raise BackendError("--config and --random-weights go together: "
                                   "e.g. --config idefics2-8b --random-weights.")
            start = time.perf_counter()
            model_id = str(random_weights_model(args.config, Path(tmp) / "model", device=args.device))
            print(f"built {args.config} with random weights in {time.perf_counter() - start:.1f} s "
                  "(answers are noise: quality is not measured)")
            options["quality"] = False
            name = args.name or f"{Path(args.config).stem}-random-{name}"
        rows = run(configs, model_id, isolate=not args.in_process, **options)
    paths = save(rows, args.out, name, title=f"{name}: {args.config if args.random_weights else model_id or default_model_id()}")
    print(format_rows(rows))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if all(r.get("error") for r in rows) else 0


def _run_chat(args) -> int:
    """What batching buys and what streaming costs, on one loaded model (vlm_course.chat_bench)."""
    from .chat_bench import measure_batching_workloads, measure_stream_overhead, plot_batching
    from .models import load_vlm

    vlm = load_vlm(args.model, device=args.device)
    # Medians of few calls swing by several points on a shared VM: these calls are short, so take more
    # unless --repeats says otherwise.
    batching = measure_batching_workloads(vlm, n=16, repeats=args.repeats or 9)
    streaming = measure_stream_overhead(vlm, repeats=args.repeats or 31)
    for name, b in batching.items():
        print(f"generate_batch of {b['conversations']} conversations ({name}: {b['completion_tokens']} reply tokens, "
              f"{sum(b['images'])} images): {b['batch_tokens_per_second']:.0f} tokens/s vs "
              f"{b['sequential_tokens_per_second']:.0f} one conversation at a time: {b['speedup']:.2f}x "
              f"(fastest runs {b['speedup_of_fastest_runs']:.2f}x); per-image work {b['per_image_share']:.0%} of the "
              f"batch's time; forward passes: {b['batch_forward_passes']} batched vs {b['sequential_forward_passes']} "
              f"one at a time; same replies: {b['same_replies']}")
    print(f"stream vs generate ({streaming['completion_tokens']} tokens): {streaming['overhead']:+.1%} wall time "
          f"(fastest runs {streaming['overhead_of_fastest_runs']:+.1%}); same text: {streaming['same_text']}; "
          f"first token after {1000 * streaming['stream_time_to_first_token']:.0f} ms")
    print(f"stream (greenlet) vs thread_stream (TextIteratorStreamer, generate in a thread): "
          f"{streaming['greenlet_vs_thread']:+.1%} wall time "
          f"(fastest runs {streaming['greenlet_vs_thread_of_fastest_runs']:+.1%}); "
          f"first piece after {1000 * streaming['stream_time_to_first_piece']:.1f} vs "
          f"{1000 * streaming['thread_time_to_first_piece']:.1f} ms; same text: {streaming['thread_same_text']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or "chat"
    path = out / f"{stem}.json"
    path.write_text(json.dumps({"model": vlm.name, "batching": batching, "streaming": streaming}, indent=2))
    plot_batching(batching).savefig(out / f"{stem}-batching.png", dpi=120)
    print(f"wrote {path} and {out / f'{stem}-batching.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
