"""Write the model card (README.md) of a trained tiny Idefics2 from its training log and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

CARD = """# tiny-idefics2: a tiny Idefics2 that sees the shapes world

The real `Idefics2ForConditionalGeneration` class with the real `Idefics2Processor`, chat template and
`<image>` / `<fake_token_around_image>` / `<end_of_utterance>` tokens, at a size that trains on a
2-core CPU. It is the default model of the vlm-course notebooks; every figure below was measured by
`vlm-course eval` on this directory.

## Architecture
| part | configuration | parameters |
|---|---|---|
{arch_rows}
| **total** | | **{total:,}** |

Weights: {weights_mb:.1f} MB of float32 safetensors. Images are resized to {image_size}x{image_size} (longest edge), cut into
{patch}x{patch} patches ({patches} patches), and the perceiver resamples them to {latents} image tokens per image.
Image splitting is off: at {image_size} pixels a crop would show the tower nothing new (idefics2-8b splits a
980-pixel image into 4 crops plus the whole, 5 x 64 = 320 tokens instead of 64). Generation stops at
`<end_of_utterance>`.

## Training
Trained from scratch by `vlm-course train-tiny` (`vlm_course/tiny/train.py`), seed {seed}:
- **Data**: every batch freshly drawn from the shapes world (1-3 objects in distinct cells of an invisible
  3x3 grid, anywhere on the canvas; 3 shapes x 6 colours; a shape may repeat in another colour, a colour on
  another shape). Eleven question families: what do we see, colour / shape of an object, counts, existence,
  position, two images (difference, which has more), the multi-turn dialogue, detailed description,
  questions outside the world, text-only follow-up questions about the image already in the conversation
  (after any first answer), and pictures from outside the world (photo-like landscapes, noise, text, line
  drawings; `shapes/outside.py`) that get the honest sentence whatever is asked, drawn with weights {weights}.{more}
  Half the images are clean, half varied: drawn at 64-256 px, tinted background, JPEG at quality 60-90, a
  few pixels of jitter.
- **Tokenizer**: byte-level BPE, {vocab} tokens, trained on the course's own strings (any text still encodes).
- **Loss**: only the assistant's answers and their `<end_of_utterance>`; prompt, image and padding tokens are -100.
- **Stage 0, the vision tower alone** (`vision_pretrain.py`): {stage0}
- **{stages_title}, the whole model**: AdamW (betas 0.9/0.98, no weight decay), batch {batch}, peak learning rate {lr}, {warmup} warm-up
  steps, held at the peak for {hold:.0%} of the run, then cosine to {min_lr}; gradient clipping {clip}; {steps1:,} steps{polish_text}.
- **Time**: {time}

![loss curve](loss_curve.png)

## Evaluation
Exact match on {n} held-out questions per family (seeded; training never draws these seeds), greedy decoding:

| family | example | correct | accuracy | bar |
|---|---|---|---|---|
{eval_rows}

**Perturbed scenes** (the same kinds of question on scenes drawn at 256 px with a tinted background,
~3 px of jitter and JPEG quality 75, downscaled by the processor): {perturbed}.

Single-image questions overall ({single_families}): {single}.
{short}

## Limitations
- It knows only the shapes world: circles, squares and triangles in six colours on a plain background,
  at most three objects, positions on a 3x3 grid. Questions from outside the world, and pictures from
  outside it of the kinds it was shown (photo-like, noise, text, drawings), get "I only know about shapes.";
  a picture unlike all of those (a real photograph of a red ball, say) may still get shapes that are not there.
- Its answers are fixed phrases; it does not chat. Free-form paraphrases of the questions it was trained on
  may fail. A follow-up that needs one of two images named ("in the second one, ...") is not trained.
- Two images, and questions about one of two objects that share a colour ("What shape is the green one?" when
  two are green), are its weakest families. A pair of images that differs only by swapped colours, or by one
  object, can get "there is no difference.", and two identical images can get a list of both; a follow-up can
  bind a colour or a place to the wrong object more often than the same question asked with the image.
- The recipe is sensitive to its seed: with the nine families of the previous recipe, seed 0 reached 94.3% on
  single-image questions against seed 1's 99.4%. The defaults of `vlm-course train-tiny` are the shipped
  model's recipe and seed, and every draw is seeded. The shipped model's stage 2 ran as `polish()` on a saved
  copy of its stage 1 (`training.json` says so under "runs"), which draws the same batches; the whole run was
  not repeated to check it byte for byte. The polishing weights were chosen between two tries by this
  evaluation (attribute drawn at 7 reached 97.2%, at 12 98.0%), so these questions are not wholly unseen by the
  choice of recipe.
- It is a teaching model: the same code runs `HuggingFaceM4/idefics2-8b` for real use.
"""

EXAMPLES = {
    "describe": "What do we see in this image?",
    "attribute": "What colour is the triangle?",
    "count": "How many shapes are there?",
    "exists": "Is there a square?",
    "position": "Where is the red circle?",
    "two_images": "What is the difference between these two images?",
    "multi_turn": "... And how about this image?",
    "description": "Describe this image in detail.",
    "unknown": "What is the capital of Italy?",
    "follow_up": "(after an answer, no new image) How many shapes are there?",
    "outside": "(a photo, noise, text or a drawing) What do we see in this image?",
}


def write_card(model_dir: str | Path) -> Path:
    """README.md from config.json, training_log.json (or training.json) and evaluation.json in `model_dir`."""
    from ..shapes.evaluate import BARS, PERTURBED_BAR, SINGLE_IMAGE_FAMILIES

    d = Path(model_dir)
    config = json.loads((d / "config.json").read_text())
    log = json.loads((d / "training.json").read_text())
    scores = json.loads((d / "evaluation.json").read_text())
    params = log["parameters"]
    v, p, t = config["vision_config"], config["perceiver_config"], config["text_config"]
    arch_rows = "\n".join([
        f"| vision tower (SigLIP-style) | hidden {v['hidden_size']}, {v['num_hidden_layers']} layers, {v['num_attention_heads']} heads, patch {v['patch_size']} | {params['vision']:,} |",
        f"| connector (MLP + perceiver) | {p['resampler_n_latents']} latents, depth {p['resampler_depth']} | {params['connector']:,} |",
        f"| text model (Mistral) | hidden {t['hidden_size']}, {t['num_hidden_layers']} layers, {t['num_attention_heads']} heads ({t['num_key_value_heads']} KV), MLP {t['intermediate_size']} | {params['text']:,} |",
        f"| lm_head | {t['hidden_size']} x {t['vocab_size']} (untied) | {params['lm_head']:,} |",
    ])
    eval_rows = "\n".join(
        f"| {f} | {EXAMPLES[f]} | {s['correct']}/{s['total']} | {s['accuracy']:.1%} | {BARS[f]:.0%} |"
        for f, s in scores.items() if f in EXAMPLES)
    pert = scores.get("perturbed")
    perturbed = (f"{pert['correct']}/{pert['total']} = **{pert['accuracy']:.1%}** (bar {PERTURBED_BAR:.0%})"
                 if pert else "not measured")
    cfg = log["config"]
    single_f = [f for f in SINGLE_IMAGE_FAMILIES if f in scores]
    right, total = sum(scores[f]["correct"] for f in single_f), sum(scores[f]["total"] for f in single_f)
    single = f"{right}/{total} = **{right / total:.1%}**" if total else "not measured"
    below = [f for f in EXAMPLES if f in scores and scores[f]["accuracy"] < BARS[f]]
    short = ("**Below its bar**: " + ", ".join(f"{f} ({scores[f]['accuracy']:.1%} < {BARS[f]:.0%})" for f in below)
             + "." + _mistakes(scores, below)) if below else ""
    n = next(iter(s["total"] for f, s in scores.items() if f in EXAMPLES))
    text = CARD.format(
        arch_rows=arch_rows, total=params["total"], weights_mb=(d / "model.safetensors").stat().st_size / 1e6,
        image_size=v["image_size"], patch=v["patch_size"], patches=(v["image_size"] // v["patch_size"]) ** 2,
        latents=p["resampler_n_latents"], seed=cfg["seed"], vocab=t["vocab_size"], batch=cfg["batch_size"],
        lr=cfg["lr"], warmup=cfg["warmup"], hold=cfg["hold"], min_lr=cfg["min_lr"], clip=cfg["clip"],
        steps=log["steps_done"], steps1=cfg["steps"], single=single, single_families=", ".join(SINGLE_IMAGE_FAMILIES), short=short,
        n=n, eval_rows=eval_rows, perturbed=perturbed,
        weights=_weights(cfg.get("family_weights")),
        time=_time(log),
        stages_title="Stages 1 and 2" if cfg.get("polish_steps") else "Stage 1", polish_text=_polish(cfg),
        stage0=_stage0(log.get("vision_pretraining")),
        more=_more(cfg.get("more_questions", 0.0)),
    )
    (d / "README.md").write_text(text)
    return d / "README.md"


def _time(log: dict) -> str:
    """Wall time, and the training process's CPU time where it was recorded (a shared machine inflates the wall)."""
    stage0 = log.get("vision_pretraining", {}).get("seconds", 0)
    steps = max(1, log["steps_done"])
    text = (f"{log['seconds'] / 60:.0f} minutes in all on a 2-core CPU, stage 0 included "
            f"({1000 * (log['seconds'] - stage0) / steps:.0f} ms a step after stage 0; {_threads(log['config'])}).")
    if "cpu_seconds" in log:
        text += (f" The training process spent {log['cpu_seconds'] / 60:.0f} CPU-minutes after stage 0 "
                 f"({1000 * log['cpu_seconds'] / steps:.0f} ms a step")
        text += ("): where that is well below the wall time, the machine was shared with other work while it trained."
                 if log["config"].get("threads", 1) == 1 else f", its {log['config']['threads']} threads together).")
    return text


def _threads(cfg: dict) -> str:
    threads, workers = cfg.get("threads", 1), cfg.get("workers", 1)
    model = "the model trains on one thread" if threads == 1 else f"the model trains on {threads} threads"
    if not workers:
        return model + " and draws its batches between steps"
    return model + (" while a DataLoader worker draws the batches" if workers == 1 else f" while {workers} DataLoader workers draw the batches")


def _polish(cfg: dict) -> str:
    """The polishing stage's sentence, or nothing for a one-stage recipe."""
    if not cfg.get("polish_steps"):
        return ""
    return (f";\n  then a polishing stage of {cfg['polish_steps']:,} steps with a fresh optimizer, 50 warm-up steps to "
            f"{cfg['polish_lr']}, cosine to {cfg['min_lr']}, that draws more of what stage 1 leaves least sure: weights "
            + _weights(cfg.get("polish_weights", cfg.get("family_weights"))))  # older runs: the same


def _more(mean: float) -> str:
    if not mean:
        return ""
    return (f"\n  A one-image question goes on with {mean:g} more text-only question{'' if mean == 1 else 's'} about its image on average (of the "
            f"one-image families, drawn with the same weights): one pass of the vision tower teaches {1 + mean:g} answers.")


def _weights(weights: dict | None) -> str:
    return ", ".join(f"{f} {w:g}" for f, w in (weights or {}).items()) or "equal"


def _mistakes(scores: dict, families: list[str], per_family: int = 2) -> str:
    """A table of a few measured mistakes (evaluation.json keeps some per family), or nothing."""
    rows = [f"| {f} | {m['question']} | {m['expected']} | {m['got']} |"
            for f in families for m in scores[f].get("mistakes", [])[:per_family]]
    if not rows:
        return ""
    return ("\n\nSome of its mistakes, as `vlm-course eval` recorded them:\n\n| family | question | expected | got |\n"
            "|---|---|---|---|\n" + "\n".join(rows))


def _stage0(record: dict | None) -> str:
    if not record:
        return "none (the tower learnt to see through the answers alone)."
    cell = record.get("patch_cell_accuracy")  # models trained before the cell target have none
    return (f"{record['steps']:,} steps of batch {record['batch_size']} images, peak rate {record['lr']}, predicting for every "
            f"patch the shape, colour{' and grid cell' if cell else ''} of the object on it (or background), with linear "
            f"heads thrown away afterwards; {record['seconds'] / 60:.1f} minutes; it ended at "
            f"{record['patch_shape_accuracy']:.0%} shape, {record['patch_colour_accuracy']:.0%} colour"
            f"{f' and {cell:.0%} cell' if cell else ''} accuracy on the patches that show an object. Idefics2 itself "
            f"starts from a pretrained vision encoder (SigLIP); this stage plays that part.")


def parameter_counts(model) -> dict[str, int]:
    """Parameters per part of an Idefics2 model."""
    def count(module):
        return sum(p.numel() for p in module.parameters())

    return {"vision": count(model.model.vision_model), "connector": count(model.model.connector),
            "text": count(model.model.text_model), "lm_head": count(model.lm_head), "total": count(model)}
