"""Write the model card (README.md) of a trained tiny BLIP-2 from its training log and evaluation."""

from __future__ import annotations

import json
from pathlib import Path


def parameter_counts(model) -> dict[str, int]:
    """Parameters per part of a BLIP-2 model."""
    def count(module):
        return sum(p.numel() for p in module.parameters())

    return {"vision": count(model.vision_model), "qformer": count(model.qformer) + model.query_tokens.numel(),
            "projection": count(model.language_projection), "text": count(model.language_model), "total": count(model)}

EXAMPLES = {
    "caption": "(no prompt)",
    "attribute": "Question: what colour is the triangle? Answer:",
    "count": "Question: how many shapes are there? Answer:",
    "exists": "Question: is there a square? Answer:",
    "position": "Question: where is the red circle? Answer:",
    "perturbed": "the five families on perturbed scenes",
}


def write_card(model_dir: str | Path, notes: str = "") -> Path:
    """README.md from config.json, training.json and evaluation.json (`vlm-course eval --json`) in `model_dir`."""
    from .evaluate import BARS

    d = Path(model_dir)
    config = json.loads((d / "config.json").read_text())
    log = json.loads((d / "training.json").read_text())
    scores = json.loads((d / "evaluation.json").read_text())
    params, cfg = log["parameters"], log["config"]
    v, q, t = config["vision_config"], config["qformer_config"], config["text_config"]
    stage0 = log.get("vision_pretraining") or {}
    rows = "\n".join(f"| {f} | {EXAMPLES.get(f, '')} | {s['correct']}/{s['total']} | {s['accuracy']:.1%} | "
                     f"{BARS.get(f, 0):.0%} | {'yes' if s['accuracy'] >= BARS.get(f, 0) else '**no**'} |"
                     for f, s in scores.items())
    below = [f for f, s in scores.items() if s["accuracy"] < BARS.get(f, 0)]
    mistakes = "\n".join(f"| {f} | {m['prompt']} | {m['expected']} | {m['got']} |"
                         for f, s in scores.items() for m in s.get("mistakes", [])[:2])
    steps = log["steps_done"]
    stage0_cpu = stage0.get("cpu_seconds")
    cpu = log.get("cpu_seconds")
    time_text = (f"{log['seconds'] / 60:.1f} minutes of wall clock in all, stage 0 included. The training process's own "
                 f"CPU time: {cpu:,.0f} s for stages 1-2 ({1000 * cpu / max(1, steps):.0f} ms a step)"
                 + (f" and {stage0_cpu:,.0f} s for stage 0" if stage0_cpu is not None else "")
                 + "; the DataLoader worker draws the next batches on the other core meanwhile, so on two idle cores "
                 "the CPU time is about the wall time." if cpu is not None else f"{log['seconds'] / 60:.1f} minutes in all.")
    stage2 = ""
    if steps > cfg["steps"]:
        stage2 = (f"\n- **Stage 2, polishing**: {steps - cfg['steps']:,} steps with a fresh optimizer, warm-up 50 steps to "
                  f"{cfg['polish_lr']}, cosine to {cfg['min_lr']}, drawing more of what stage 1 leaves least sure (binding a "
                  f"place or a colour to a named object): weights "
                  + ", ".join(f"{f} {w:g}" for f, w in cfg["polish_weights"].items()) + ".")
    text = f"""# tiny-blip2: a tiny BLIP-2 that sees the shapes world

The real `Blip2ForConditionalGeneration` (vision tower, Q-Former with learned query tokens, OPT language model)
with the real `Blip2Processor`, at a size that trains on a 2-core CPU. It is the image-to-text model of lesson 08:
it captions ("a red circle and a blue square.") and answers prompted questions in BLIP-2's style
("Question: what colour is the circle? Answer: red."). Every figure below was measured on this directory.

## Architecture
| part | configuration | parameters |
|---|---|---|
| vision tower (ViT, class token) | hidden {v['hidden_size']}, {v['num_hidden_layers']} layers, {v['num_attention_heads']} heads, patch {v['patch_size']}, image {v['image_size']} | {params['vision']:,} |
| Q-Former + query tokens | {config['num_query_tokens']} queries, hidden {q['hidden_size']}, {q['num_hidden_layers']} layers, cross-attention every {q['cross_attention_frequency']} layer(s) | {params['qformer']:,} |
| language projection | {q['hidden_size']} -> {t['hidden_size']} | {params['projection']:,} |
| language model (OPT) | hidden {t['hidden_size']}, {t['num_hidden_layers']} layers, {t['num_attention_heads']} heads, FFN {t['ffn_dim']}, vocabulary {t['vocab_size']} (tied) | {params['text']:,} |
| **total** | | **{params['total']:,}** |

Weights: {(d / 'model.safetensors').stat().st_size / 1e6:.1f} MB of float32 safetensors. Images are resized to
{v['image_size']}x{v['image_size']} and cut into {(v['image_size'] // v['patch_size']) ** 2} patches (plus the class
token); the Q-Former's {config['num_query_tokens']} query tokens cross-attend to them and become the
{config['num_query_tokens']} `<image>` tokens the processor puts before `<s>` and the prompt (blip2-opt-2.7b: 32).
Generation stops at `</s>`.

## Training
Trained from scratch by `vlm-course train-tiny --model blip2` (`vlm_course/tiny_blip2/train.py`), seed {cfg['seed']}:
- **Data**: every batch freshly drawn from the shapes world (the tiny Idefics2's: 1-3 objects in distinct cells of
  a 3x3 grid, 3 shapes x 6 colours), rendered clean half the time and varied the other half (64-256 px, tinted
  background, JPEG 60-90, jitter). Five families, drawn with weights {', '.join(f'{f} {w:g}' for f, w in cfg['task_weights'].items())}:
  the caption (no prompt) and four prompted families in BLIP-2's style, the questions of the Idefics2 families
  of the same names.
- **Tokenizer**: byte-level BPE, {t['vocab_size']} tokens, trained on the task's own strings (any text still encodes).
- **Loss**: only the answer and its `</s>`; query, prompt and padding positions are -100.
- **Stage 0, the vision tower alone**: {stage0.get('steps', 0):,} steps of batch {stage0.get('batch_size', 0)} images,
  peak rate {stage0.get('lr', '-')}, predicting for every patch the shape, colour and grid cell of the object on it
  (the tiny Idefics2's targets; BLIP-2 itself starts from a pretrained EVA-CLIP tower); {stage0.get('seconds', 0) / 60:.1f}
  minutes; it ended at {stage0.get('patch_shape_accuracy', 0):.0%} shape, {stage0.get('patch_colour_accuracy', 0):.0%}
  colour and {stage0.get('patch_cell_accuracy', 0):.0%} cell accuracy on the patches that show an object.
- **Stage 1, the whole model{' with the vision tower frozen (as BLIP-2 freezes its image encoder)' if cfg.get('freeze_vision') else ''}**:
  AdamW (betas 0.9/0.98, no weight decay), batch {cfg['batch_size']}, peak rate {cfg['lr']}, {cfg['warmup']} warm-up
  steps, held at the peak for {cfg['hold']:.0%} of the run, then cosine to {cfg['min_lr']}; clipping {cfg['clip']};
  {cfg['steps']:,} steps.{stage2}
- **Time**: {time_text}{notes}

![loss curve](loss_curve.png)

## Evaluation
Exact match on seeded held-out sets (training never draws these seeds), greedy decoding, `vlm-course eval --model tiny-blip2`:

| family | prompt | correct | accuracy | bar | met |
|---|---|---|---|---|---|
{rows}

{('**Below its bar**: ' + ', '.join(below) + '.') if below else 'Every bar is met.'}

Some mistakes, as the evaluation recorded them:

| family | prompt | expected | got |
|---|---|---|---|
{mistakes}

## Limitations
- It knows only the shapes world: circles, squares and triangles in six colours, at most three objects on a
  3x3 grid. Photographs get captions about shapes that are not there.
- Like BLIP-2 it reads one image and continues one prompt: no chat, no second image, no text-only questions
  (the course raises a clear error for each). Prompts must be in the style it was trained on.
- It is a teaching model: the same code runs `Salesforce/blip2-opt-2.7b` for real use.
"""
    (d / "README.md").write_text(text)
    return d / "README.md"
