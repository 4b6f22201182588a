"""Train the tiny Idefics2 from scratch on the shapes world, on a CPU, in well under an hour.

Every batch is freshly drawn (no data set on disk), rendered through the real Idefics2 processor and
chat template, and trained only on the assistant's answers and their <end_of_utterance>.
"""

from __future__ import annotations

import json
import ctypes
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..finetune import answer_labels  # noqa: F401  (the one implementation of label masking; re-exported)
from ..plots import save_loss_curve
from ..shapes.questions import SINGLE_IMAGE, ask_more, make_sample, render_training
from .vision_pretrain import pretrain_vision
from .build import ARCHITECTURE, build_config, build_model, build_processor, tokenizer_corpus, train_tokenizer

# How often each question family is drawn in stage 1 (run T1 of 2026-12-01, 12,600 steps in 37.8 min with stage 0:
# every family at its bar but attribute 96.8%, count 96.6%, two_images 94.8%). It leans on binding a shape to its
# place or colour (position, attribute, description), on two images and on follow-ups; less on what is learnt
# early (count, existence, unknown, outside pictures). One stage of these beat 10,000 steps of another mix and a
# 4,000-step polish in the same time (runs S1 and R1y).
FAMILY_WEIGHTS = {"describe": 1.0, "attribute": 6.0, "count": 1.0, "exists": 1.2, "position": 5.0,
                  "two_images": 3.0, "multi_turn": 0.5, "description": 4.0, "unknown": 0.2,
                  "follow_up": 3.2, "outside": 0.25}
# The polishing stage draws more of what stage 1 left under its bar: attribute, count and two images.
POLISH_WEIGHTS = {**FAMILY_WEIGHTS, "attribute": 12.0, "count": 2.5, "position": 4.0, "two_images": 3.5,
                  "multi_turn": 0.6, "description": 3.5}


@dataclass
class TrainConfig:
    vision_steps: int = 1_500  # stage 0: the vision tower alone learns to see shapes (vision_pretrain.py)
    vision_lr: float = 2e-3
    steps: int = 12_600  # 165 ms a step (run T1; one more question a sample), 37.8 min with stage 0
    batch_size: int = 32
    lr: float = 5e-4
    min_lr: float = 5e-5
    warmup: int = 200
    hold: float = 0.4  # fraction of the run at the peak rate: shapes are learnt late, so keep the rate up
    # Stage 2: a fresh optimizer, a short warm-up to a gentle peak, on the polishing mix: it lifts what stage 1
    # left short (measured on T1: attribute 96.8 -> 98.0, count 96.6 -> 98.4, two_images 94.8 -> 95.8; with
    # attribute at 7 instead of 12 it stopped at 97.2). 2,000 steps: 5.4 min, 43.0 min in all
    polish_steps: int = 2_000
    polish_lr: float = 2e-4
    # Each one-image sample goes on with this many more text-only questions about its image, on average: one
    # pass of the vision tower then teaches several answers, follow-ups above all (measured on a 2,000-step
    # polish: 2 more questions cost 30% a step and took follow-ups from 85% to 92%)
    more_questions: float = 1.0
    weight_decay: float = 0.0
    clip: float = 1.0
    seed: int = 1  # the shipped model's (its card's Limitations say how far seed 0 fell behind)
    threads: int = 2  # a second thread helps a little (measured 169-170 against 178-186 ms a step) even though...
    workers: int = 1  # ...the data worker shares its core: drawing and rendering a batch takes about 38 ms
    group: int = 8  # batches drawn together and grouped by length, to waste little on padding
    family_weights: dict = field(default_factory=lambda: dict(FAMILY_WEIGHTS))
    polish_weights: dict = field(default_factory=lambda: dict(POLISH_WEIGHTS))
    checkpoint_every: int = 1_000
    architecture: dict = field(default_factory=lambda: ARCHITECTURE)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, the peak rate held for a while, then cosine down to min_lr at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    start = max(cfg.warmup, int(cfg.hold * cfg.steps))
    if step < start:
        return cfg.lr
    progress = (step - start) / max(1, cfg.steps - start)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def make_batches(processor, rng: random.Random, batch_size: int, assistant_ids: list[int], end_id: int,
                 n_batches: int = 1, weights: dict | None = None, more_questions: float = 0.0) -> list:
    """`n_batches` training batches of freshly drawn samples, grouped by length (short with short)."""
    weights = weights or FAMILY_WEIGHTS
    families, w = zip(*weights.items())
    single = tuple(f for f in SINGLE_IMAGE if weights.get(f))
    samples = [make_sample(rng.choices(families, w)[0], rng, render_training) for _ in range(batch_size * n_batches)]
    if more_questions:  # one-image samples go on with more questions about their image (see TrainConfig)
        samples = [ask_more(s, rng, single, [weights[f] for f in single], _how_many(rng, more_questions))
                   if s.family in SINGLE_IMAGE else s for s in samples]
    texts = [processor.apply_chat_template(s.messages) for s in samples]
    lengths = [len(t) for t in texts]  # characters: close enough to tokens for grouping
    order = sorted(range(len(samples)), key=lengths.__getitem__)
    batches = []
    for k in range(n_batches):
        rows = order[k * batch_size:(k + 1) * batch_size]
        batch = processor(text=[texts[i] for i in rows], images=[samples[i].images for i in rows],
                          return_tensors="pt", padding=True)
        batch["labels"] = answer_labels(batch["input_ids"], assistant_ids, end_id)
        batches.append(batch)
    rng.shuffle(batches)
    return batches


def _how_many(rng: random.Random, mean: float) -> int:
    """0, 1, 2 ... more questions, `mean` on average: the whole part always, one more with the fraction's chance."""
    return int(mean) + (rng.random() < mean - int(mean))


def make_batch(processor, rng: random.Random, batch_size: int, assistant_ids: list[int], end_id: int):
    return make_batches(processor, rng, batch_size, assistant_ids, end_id)[0]


class ShapesBatches(torch.utils.data.IterableDataset):
    """An endless, seeded stream of training batches; run in a DataLoader worker it overlaps with training."""

    def __init__(self, processor, seed: int, cfg: "TrainConfig", weights: dict | None = None):
        self.processor, self.seed, self.cfg = processor, seed, cfg
        self.weights = weights or cfg.family_weights
        tokenizer = processor.tokenizer
        self.assistant_ids = tokenizer("\nAssistant:", add_special_tokens=False).input_ids[1:]  # after the newline
        self.end_id = tokenizer.convert_tokens_to_ids("<end_of_utterance>")

    def __iter__(self):
        torch.set_num_threads(1)
        rng = worker_rng(self.seed)
        while True:
            yield from make_batches(self.processor, rng, self.cfg.batch_size, self.assistant_ids, self.end_id,
                                    self.cfg.group, self.weights, self.cfg.more_questions)


def worker_rng(seed: int) -> random.Random:
    """The random stream of this DataLoader worker (or of this process): each worker its own, or they would
    repeat each other's batches."""
    worker = torch.utils.data.get_worker_info()
    return random.Random(seed + (worker.id * 7_919 if worker else 0))


def in_background(batches: torch.utils.data.IterableDataset, workers: int):
    """An iterator over `batches` drawn by `workers` background processes (0: in this process, between steps)."""
    if workers == 0:
        return iter(batches)
    return iter(torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers, prefetch_factor=4))


def batch_stream(processor, seed: int, cfg: "TrainConfig", weights: dict | None = None):
    """Batches from `cfg.workers` background processes (0: drawn in this process, between steps)."""
    return in_background(ShapesBatches(processor, seed, cfg, weights), cfg.workers)


def train_tiny(out_dir: str | Path, cfg: TrainConfig | None = None, progress: bool = True) -> Path:
    """Train a tiny Idefics2 from scratch and save it (save_pretrained layout) with its loss curve to `out_dir`.

    Stage 0: `cfg.vision_steps` steps of the vision tower alone on patch targets (see vision_pretrain.py).
    Stage 1: `cfg.steps` steps of the whole model on the answers. Stage 2: `cfg.polish_steps` with a fresh
    optimizer, `cfg.polish_lr` and `cfg.polish_weights`. Stage 1 is also kept in `out_dir/stage1`, so
    `polish(copy_of_it, cfg)` tries another stage 2 in minutes instead of retraining for half an hour.
    """
    cfg = cfg or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = train_tokenizer(tokenizer_corpus(seed=cfg.seed + 12345))
    processor = build_processor(tokenizer)
    model = build_model(build_config(tokenizer, cfg.architecture), seed=cfg.seed)
    extra = {}
    if cfg.vision_steps:  # drawn in this process, so it may use the data workers' cores too
        torch.set_num_threads(max(cfg.threads, min(cfg.threads + cfg.workers, os.cpu_count() or 1)))
        extra["vision_pretraining"] = pretrain_vision(model, processor, cfg.vision_steps, lr=cfg.vision_lr,
                                                      seed=cfg.seed, progress=progress)
        torch.set_num_threads(cfg.threads)
    # evaluation draws from small seeds; training from far away
    seconds = extra.get("vision_pretraining", {}).get("seconds", 0.0)  # the clock counts every stage
    history, seconds = _run(model, processor, cfg.seed + 1_000_003, cfg, out, stage=1, progress=progress,
                            seconds_before=seconds, extra=extra)
    if cfg.polish_steps:
        shutil.copytree(out, out / "stage1", ignore=shutil.ignore_patterns("stage1"), dirs_exist_ok=True)
    _polish_stage(model, processor, cfg, out, progress, history, seconds, extra)
    return out


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the system: every batch has a new
    sequence length, so its tensors were freed and faulted in again at each step (measured over 500 steps:
    1,184,501 minor page faults, 155,288 with this). Elsewhere than glibc (macOS, Windows, musl) it does nothing."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    trim_threshold, top_pad, mmap_threshold = -1, -2, -3  # glibc's <malloc.h> M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD
    mallopt(trim_threshold, 1 << 30)
    mallopt(top_pad, 64 << 20)
    mallopt(mmap_threshold, 1 << 30)


def polish(out_dir: str | Path, cfg: TrainConfig | None = None, progress: bool = True) -> Path:
    """Run the polishing stage (stage 2) on a model whose first stage is saved in `out_dir`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg = cfg or TrainConfig()
    out = Path(out_dir)
    if not (out / "training.json").is_file():  # checked first: loading the model would fail less clearly, or not at all
        from ..errors import ModelNotFoundError

        raise ModelNotFoundError(f"{str(out)!r} has no training.json, so there is no first stage to polish. "
                                 "polish() continues a run of train_tiny (vlm-course train-tiny) in the same folder.")
    keep_freed_memory()  # as train_tiny does: stage 2 runs the same here as there
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + 1)
    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out)
    log = json.loads((out / "training.json").read_text())
    extra = {k: log[k] for k in ("vision_pretraining", "cpu_seconds") if k in log}
    _polish_stage(model, processor, cfg, out, progress, log["history"], log["seconds"], extra)
    return out


def _polish_stage(model, processor, cfg: TrainConfig, out: Path, progress: bool, history: list[dict],
                  seconds: float, extra: dict) -> None:
    """Stage 2 (if cfg.polish_steps): the same draws whether stage 1 ran just now or was loaded from disk."""
    if cfg.polish_steps:  # seed + 2,000,004: the shipped model's (2,000,003 went to a short stage it no longer has)
        _run(model, processor, cfg.seed + 2_000_004, cfg, out, stage=2, progress=progress, history=history,
             seconds_before=seconds, extra=extra)


def polish_rate(step: int, cfg) -> float:
    """Stage 2: a short warm-up to cfg.polish_lr, then cosine to cfg.min_lr at cfg.polish_steps."""
    warmup = 50
    if step < warmup:
        return cfg.polish_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.polish_steps - warmup)
    return cfg.min_lr + 0.5 * (cfg.polish_lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def _stages(cfg: TrainConfig) -> dict[int, tuple]:
    """Stages 1-2: (steps, learning-rate schedule, first step number); the global step numbers go on across stages."""
    return {1: (cfg.steps, learning_rate, 0), 2: (cfg.polish_steps, polish_rate, cfg.steps)}


def _run(model, processor, data_seed: int, cfg: TrainConfig, out: Path, stage: int, progress: bool,
         history: list[dict] | None = None, seconds_before: float = 0.0,
         extra: dict | None = None) -> tuple[list[dict], float]:
    """One stage; returns the loss history and the seconds on the clock at its end (earlier stages included)."""
    processor.tokenizer.padding_side = "right"  # training pads on the right; generation (the saved default) on the left
    batches = batch_stream(processor, data_seed, cfg, cfg.family_weights if stage == 1 else cfg.polish_weights)
    model.train()
    steps, rate, first = _stages(cfg)[stage]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    history, smoothed = history if history is not None else [], None
    start = time.time() - seconds_before
    cpu_start = time.process_time() - (extra or {}).get("cpu_seconds", 0.0)
    bar = tqdm(range(steps), desc=f"training tiny Idefics2 (stage {stage})", disable=not progress, mininterval=2)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = rate(step, cfg)
        loss = model(**next(batches)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        if step % 10 == 0:
            history.append({"step": first + step, "loss": round(loss.item(), 5), "seconds": round(time.time() - start, 1)})
            bar.set_postfix(loss=f"{smoothed:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps:
            if extra is not None:  # the training process's own CPU time: on a busy machine, what wall time hides
                extra["cpu_seconds"] = round(time.process_time() - cpu_start, 1)
            _save(model, processor, out, cfg, history, first + step + 1, time.time() - start, extra)
    stop_workers(batches)
    model.eval()
    return history, time.time() - start


def stop_workers(batches) -> None:
    """Stop the DataLoader's worker now. Its iterator sits in a reference cycle, so the worker (a fork holding
    a copy of this process's memory: measured 380 MB) lived on after training until the garbage collector ran."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # absent with workers=0 (a plain generator)
    if shutdown is not None:
        shutdown()


def _save(model, processor, out: Path, cfg: TrainConfig, history: list[dict], steps_done: int, seconds: float,
          extra: dict | None = None) -> None:
    processor.tokenizer.padding_side = "left"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    processor.tokenizer.padding_side = "right"
    from .card import parameter_counts

    record = {**(extra or {}), "config": asdict(cfg), "steps_done": steps_done,
              "seconds": round(seconds, 1), "parameters": parameter_counts(model), "history": history}
    (out / "training.json").write_text(json.dumps(record))
    save_loss_curve(history, out / "loss_curve.png", "Training the tiny Idefics2 on the shapes world",
                    tuple(first for stage, (steps, _, first) in _stages(cfg).items()
                          if stage > 1 and steps and first < steps_done))
