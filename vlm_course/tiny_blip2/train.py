"""Train the tiny BLIP-2 from scratch on the shapes world, on a CPU, in minutes.

Stage 0 teaches the vision tower alone to see shapes (the same patch targets as the tiny Idefics2's
stage 0: BLIP-2 too starts from a pretrained vision encoder, EVA-CLIP, that the tiny one lacks).
Stage 1 trains the whole model on captions and prompted questions, freshly drawn for every batch and
rendered through the real `Blip2Processor`, with the loss on the answers (and the end token) only.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..plots import save_loss_curve
from ..shapes.questions import render_clean, render_training
from ..tiny.train import in_background, stop_workers, worker_rng  # the tiny Idefics2's data workers...
from ..tiny.train import learning_rate, polish_rate  # ...and schedules (duck-typed on cfg)
from ..tiny.vision_pretrain import CELL_CLASSES, COLOUR_CLASSES, SHAPE_CLASSES, patch_targets
from ..shapes.world import Scene, draw_scene, random_scene
from .build import ARCHITECTURE, build_config, build_model, build_processor, tokenizer_corpus, train_tokenizer
from .tasks import TASKS, make_task

# Stage 1 learns captions, counts and existence first; binding a place to a named object comes last.
POLISH_WEIGHTS = {"caption": 1.5, "attribute": 2.0, "count": 1.0, "exists": 1.0, "position": 3.0}


@dataclass
class TrainConfig:
    vision_steps: int = 1_500
    vision_lr: float = 2e-3
    steps: int = 6_000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 5e-5
    warmup: int = 200
    hold: float = 0.4  # fraction of the run at the peak rate
    weight_decay: float = 0.0
    clip: float = 1.0
    seed: int = 1
    threads: int = 1  # the matrices are too small for a second thread to help...
    workers: int = 1  # ...so the other core draws and renders the batches in a DataLoader worker
    task_weights: dict = field(default_factory=lambda: dict(TASKS))
    freeze_vision: bool = True  # after stage 0, as BLIP-2 freezes its image encoder (and saves its backward pass)
    polish_steps: int = 5_000  # stage 2: a fresh optimizer, a lower peak, more of what stage 1 leaves least sure
    polish_lr: float = 5e-4
    polish_weights: dict = field(default_factory=lambda: dict(POLISH_WEIGHTS))
    checkpoint_every: int = 1_000
    probe: int = 32  # held-out samples a family scored at every checkpoint (0: none)
    architecture: dict = field(default_factory=lambda: ARCHITECTURE)


def make_batch(processor, tasks) -> dict:
    """Pixel values, ids (query tokens, <s>, prompt, answer, </s>, right padding) and labels that keep
    only the answer and its </s>."""
    tokenizer = processor.tokenizer
    eos = tokenizer.eos_token
    batch = processor(images=[t.image for t in tasks], text=[t.text + eos for t in tasks], padding=True,
                      padding_side="right", return_tensors="pt")
    prompt_lengths = [len(ids) for ids in tokenizer([t.prompt for t in tasks]).input_ids]  # <s> + prompt
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    queries = processor.num_query_tokens
    for row, n in enumerate(prompt_lengths):
        labels[row, :queries + n] = -100
    batch["labels"] = labels
    return batch


class TaskBatches(torch.utils.data.IterableDataset):
    """An endless, seeded stream of training batches; run in a DataLoader worker it overlaps with training."""

    def __init__(self, processor, seed: int, cfg: TrainConfig, weights: dict):
        self.processor, self.seed, self.cfg, self.weights = processor, seed, cfg, weights

    def __iter__(self):
        torch.set_num_threads(1)
        rng = worker_rng(self.seed)
        families, weights = zip(*self.weights.items())
        while True:
            tasks = [make_task(rng.choices(families, weights)[0], rng, render_training) for _ in range(self.cfg.batch_size)]
            yield make_batch(self.processor, tasks)


def batch_stream(processor, seed: int, cfg: TrainConfig, weights: dict):
    return in_background(TaskBatches(processor, seed, cfg, weights), cfg.workers)


# --- stage 0 ------------------------------------------------------------------------------------

def vision_batch(processor, rng: random.Random, batch_size: int, image_size: int, patch: int):
    """Pixel values of freshly drawn scenes (varied, but never moved, so the targets stay true) and
    their patch targets (shape, colour, cell)."""
    images, targets = [], []
    for _ in range(batch_size):
        scene = random_scene(rng)
        if rng.random() < 0.5:
            scene = Scene(scene.things, tuple(rng.randint(215, 255) for _ in range(3)))
        images.append(draw_scene(scene, size=rng.choice((64, 96, 128, 256)), jpeg_quality=rng.choice((None, 60, 75, 90))))
        targets.append(patch_targets(scene, image_size, patch))
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    return pixels, *(torch.stack(kind) for kind in zip(*targets))


class VisionBatches(torch.utils.data.IterableDataset):
    """Stage 0's endless stream of (pixel values, patch targets), drawn in a DataLoader worker."""

    def __init__(self, processor, seed: int, batch_size: int, image_size: int, patch: int):
        self.processor, self.seed, self.args = processor, seed, (batch_size, image_size, patch)

    def __iter__(self):
        torch.set_num_threads(1)
        rng = random.Random(self.seed)
        while True:
            yield vision_batch(self.processor, rng, *self.args)


def pretrain_vision(model, processor, steps: int, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                    workers: int = 1, progress: bool = True) -> dict:
    """Train the BLIP-2 vision tower on patch targets (its class token aside); linear heads thrown away."""
    tower = model.vision_model
    vcfg = tower.config
    classes = {"shape": SHAPE_CLASSES, "colour": COLOUR_CLASSES, "cell": CELL_CLASSES}
    heads = nn.ModuleDict({kind: nn.Linear(vcfg.hidden_size, len(names)) for kind, names in classes.items()})
    params = list(tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    data = VisionBatches(processor, seed + 3_000_003, batch_size, vcfg.image_size, vcfg.patch_size)
    batches = in_background(data, workers)
    tower.train()
    start, cpu_start, accuracy = time.time(), time.process_time(), dict.fromkeys(classes, 0.0)
    bar = tqdm(range(steps), desc="pretraining the BLIP-2 vision tower (stage 0)", disable=not progress, mininterval=2)
    for step in bar:
        for group in optimizer.param_groups:  # warm up, then cosine down to a tenth
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        pixels, *targets = next(batches)
        features = tower(pixel_values=pixels).last_hidden_state[:, 1:]  # the patches, not the class token
        logits = {kind: head(features) for kind, head in heads.items()}
        loss = sum(nn.functional.cross_entropy(logits[kind].flatten(0, 1), target.flatten())
                   for kind, target in zip(classes, targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        objects = targets[0] > 0
        for kind, target in zip(classes, targets):
            hit = (logits[kind].argmax(-1)[objects] == target[objects]).float().mean().item()
            accuracy[kind] = 0.9 * accuracy[kind] + 0.1 * hit
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", **{kind: f"{a:.2f}" for kind, a in accuracy.items()})
    stop_workers(batches)
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "seconds": round(time.time() - start, 1),
            "cpu_seconds": round(time.process_time() - cpu_start, 1),
            "final_loss": round(loss.item(), 4), **{f"patch_{kind}_accuracy": round(a, 3) for kind, a in accuracy.items()}}


# --- stage 1 ------------------------------------------------------------------------------------

def probe(model, processor, n: int, seed: int = 99) -> dict[str, float]:
    """Exact match on `n` fresh clean samples a family (a quick look during training, not the evaluation)."""
    from .evaluate import generate_answers

    rng = random.Random(seed)
    scores = {}
    for family in TASKS:
        tasks = [make_task(family, rng, render_clean) for _ in range(n)]
        replies = generate_answers(model, processor, tasks)
        scores[family] = round(sum(r == t.answer for r, t in zip(replies, tasks)) / n, 3)
    model.train()
    return scores


def train_tiny_blip2(out_dir: str | Path, cfg: TrainConfig | None = None, progress: bool = True) -> Path:
    """Train a tiny BLIP-2 from scratch and save it (save_pretrained layout) with its log and loss curve."""
    cfg = cfg or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tokenizer = train_tokenizer(tokenizer_corpus(seed=cfg.seed + 12345))
    processor = build_processor(tokenizer, cfg.architecture["num_query_tokens"])
    model = build_model(build_config(tokenizer, cfg.architecture), seed=cfg.seed)
    extra = {}
    # One thread: with two, a core shared with other work makes every step wait for the slower thread
    # (measured here: 0.13 s a vision step on one thread, 0.4-1.9 s on two while another job ran).
    torch.set_num_threads(cfg.threads)
    if cfg.vision_steps:
        extra["vision_pretraining"] = pretrain_vision(model, processor, cfg.vision_steps, lr=cfg.vision_lr,
                                                      seed=cfg.seed, workers=cfg.workers, progress=progress)
    seconds = extra.get("vision_pretraining", {}).get("seconds", 0.0)  # the clock counts stage 0
    train_stage(model, processor, cfg, out, 1, extra, seconds_before=seconds, progress=progress)
    if cfg.polish_steps:
        shutil.copytree(out, out / "stage1", ignore=shutil.ignore_patterns("stage1"), dirs_exist_ok=True)
        train_stage(model, processor, cfg, out, 2, extra, progress=progress)
    return out


def train_stage(model, processor, cfg: TrainConfig, out: Path, stage: int, extra: dict | None = None,
                seconds_before: float | None = None, progress: bool = True) -> None:
    """Stage 1 (cfg.steps) or 2 (cfg.polish_steps) on captions and prompted questions; the vision tower
    trains too unless cfg.freeze_vision. Stage 2 continues the log that stage 1 left in `extra`."""
    extra = extra if extra is not None else {}
    torch.set_num_threads(cfg.threads)
    steps, rate, weights = ((cfg.steps, learning_rate, cfg.task_weights) if stage == 1 else
                            (cfg.polish_steps, polish_rate, cfg.polish_weights))
    first = 0 if stage == 1 else cfg.steps  # global step numbers continue across stages
    # evaluation draws from other seeds; each stage its own stream
    batches = batch_stream(processor, cfg.seed + stage * 1_000_003, cfg, weights)
    model.train()
    model.vision_model.requires_grad_(not cfg.freeze_vision)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    history, probes, smoothed = extra.setdefault("history", []), extra.setdefault("probes", []), None
    if seconds_before is None:  # continue the clocks of the stages before
        seconds_before = extra.get("seconds", 0.0)
    cpu_before = extra.get("cpu_seconds", extra.get("vision_pretraining", {}).get("cpu_seconds", 0.0))
    start, cpu_start = time.time() - seconds_before, time.process_time() - cpu_before
    bar = tqdm(range(steps), desc=f"training tiny BLIP-2 (stage {stage})", disable=not progress, mininterval=2)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = rate(step, cfg)
        loss = model(**next(batches)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, cfg.clip)
        optimizer.step()
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        if step % 10 == 0:
            history.append({"step": first + step, "loss": round(loss.item(), 5), "seconds": round(time.time() - start, 1)})
            bar.set_postfix(loss=f"{smoothed:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps:
            if cfg.probe:
                probe_start, probe_cpu = time.time(), time.process_time()
                probes.append({"step": first + step + 1, **probe(model, processor, cfg.probe)})
                start += time.time() - probe_start  # the probes are not training
                cpu_start += time.process_time() - probe_cpu
                bar.write(f"step {first + step + 1}: {probes[-1]}")
            extra["cpu_seconds"] = round(time.process_time() - cpu_start, 1)  # this process's; the data worker's apart
            extra["seconds"] = round(time.time() - start, 1)
            _save(model, processor, out, cfg, first + step + 1, extra)
    stop_workers(batches)
    model.requires_grad_(True)
    model.eval()


def _save(model, processor, out: Path, cfg: TrainConfig, steps_done: int, extra: dict) -> None:
    from .card import parameter_counts

    processor.tokenizer.padding_side = "left"  # generation pads on the left
    model.save_pretrained(out)
    processor.save_pretrained(out)
    record = {**{k: v for k, v in extra.items() if k not in ("history", "probes")}, "config": asdict(cfg),
              "steps_done": steps_done, "parameters": parameter_counts(model), "probes": extra["probes"],
              "history": extra["history"]}
    (out / "training.json").write_text(json.dumps(record))
    save_loss_curve(record["history"], out / "loss_curve.png", "Training the tiny BLIP-2 on the shapes world",
                    (cfg.steps,) if steps_done > cfg.steps else ())


def cli_train(args) -> int:
    """`vlm-course train-tiny --model blip2`: the shipped recipe unless an option overrides it."""
    given = {name: getattr(args, name, None) for name in ("vision_steps", "steps", "polish_steps", "batch_size", "seed",
                                                           "threads", "workers")}
    cfg = TrainConfig(**{name: value for name, value in given.items() if value is not None})
    out = train_tiny_blip2(args.out or "runs/tiny-blip2", cfg)
    print(f"saved the trained model and its loss curve to {out}")
    print(f"evaluate it with: vlm-course eval --model {out}")
    return 0
