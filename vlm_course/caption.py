"""Image-to-text for both model families: `caption(vlm, images, prompt=None)`.

BLIP-2 is an image-to-text model: one image in, text out, continuing an optional prompt. Its
checkpoints caption with no prompt and answer questions written "Question: ... Answer:"
(`blip2_prompt`). Idefics2 is an image-text-to-text model: a conversation of images and text in, a
reply out, so its caption is the reply to a one-turn chat ("What do we see in this image?" unless a
prompt is given). Both caption a list of images in batches; greedy captions are the same batched or
one at a time.

    vlm = load_vlm("tiny-blip2")
    caption(vlm, [img1, img2])                                  # ["a red circle.", "a blue square ..."]
    caption(vlm, img1, blip2_prompt("What colour is the circle?"))  # ["red."]

`chat.generate`, `chat.stream` and the OpenAI-compatible server take a BLIP-2 too, for what it can
answer: one user turn with one image and an optional prompt (`blip2_model_inputs` is what
`chat.prepare` hands it). What BLIP-2 cannot do (several images in one turn, a multi-turn chat, text
without an image, a system prompt) is a `MessagesError` saying so: `blip2_inputs(messages)` is the check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .errors import GenerationError, MessagesError

DEFAULT_QUESTION = "What do we see in this image?"  # what Idefics2 is asked for a caption
MAX_NEW_TOKENS = 32


def is_blip2(model_or_vlm: Any) -> bool:
    """True for a BLIP-2 model (or a VLM bundle holding one)."""
    model = getattr(model_or_vlm, "model", model_or_vlm)
    return getattr(getattr(model, "config", None), "model_type", None) == "blip-2"


def blip2_prompt(question: str) -> str:
    """A question in BLIP-2's prompt style: "What colour is the circle?" -> "Question: what colour is the circle? Answer:"."""
    question = question.strip()
    return f"Question: {question[:1].lower()}{question[1:]} Answer:"


def caption(vlm, images, prompt: str | Sequence[str | None] | None = None, *, batch_size: int = 8,
            max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """Greedy text for each image, in order, `batch_size` images a generate call.

    images: one image or a list (PIL images, paths, URLs, data URIs, bytes: whatever load_image takes).
    prompt: None (a caption), one prompt for every image, or a list with one per image. BLIP-2
    continues it verbatim (write questions with `blip2_prompt`); Idefics2 gets it as the user's text.
    """
    from .images import load_image

    if isinstance(images, (list, tuple)):
        images = list(images)
    else:
        images = [images]
    if not images:
        raise MessagesError("caption() needs at least one image; BLIP-2 and Idefics2 both caption images, not text.")
    prompts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt] * len(images)
    if len(prompts) != len(images):
        raise MessagesError(f"caption() got {len(images)} images but {len(prompts)} prompts; give one prompt, "
                            "or a list with one per image.")
    if any(p is not None and not isinstance(p, str) for p in prompts):
        raise MessagesError("Each prompt must be a string or None.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise GenerationError(f"batch_size must be a positive integer, got {batch_size!r}.")
    loaded = [load_image(im) for im in images]
    out: list[str] = []
    for i in range(0, len(loaded), batch_size):
        chunk, chunk_prompts = loaded[i:i + batch_size], prompts[i:i + batch_size]
        if is_blip2(vlm):
            out += blip2_generate(vlm.model, vlm.processor, chunk, chunk_prompts, max_new_tokens)
        else:
            from .chat import generate_batch
            from .messages import user

            conversations = [[user(im, p or DEFAULT_QUESTION)] for im, p in zip(chunk, chunk_prompts)]
            out += [r.text for r in generate_batch(vlm, conversations, max_new_tokens=max_new_tokens)]
    return out


@dataclass
class Caption:
    """One generated text with its token counts (what an OpenAI-style usage reports)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (the end token) or "length" (max_new_tokens)


def blip2_generate(model, processor, images: Sequence, prompts: Sequence[str | None],
                   max_new_tokens: int | Sequence[int] = MAX_NEW_TOKENS, details: bool = False) -> list:
    """Greedy BLIP-2 continuations of one batch: image i with prompts[i] (None or "": a caption).

    The processor puts the query tokens first, then the text padded on the left, so every row ends
    where generation starts; the ids that come back begin with the prompt, cut off by its length.
    max_new_tokens may differ per row: the batch runs to the largest and each row is cut to its own
    (greedy text is a prefix of itself, so the cut equals a shorter run). details=True: `Caption`s."""
    import torch

    limits = list(max_new_tokens) if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * len(images)
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in limits):
        raise GenerationError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
    inputs = _processed(model, processor, list(images), list(prompts), "left")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max(limits), do_sample=False)
    eos = model.generation_config.eos_token_id
    ends = set(eos if isinstance(eos, (list, tuple)) else [eos])
    results = []
    for row, limit in enumerate(limits):
        new = out[row, inputs["input_ids"].shape[1]:][:limit].tolist()
        end = next((i for i, t in enumerate(new) if t in ends), None)
        new = new if end is None else new[:end + 1]
        text = processor.tokenizer.decode(new, skip_special_tokens=True).strip()
        reason = "stop" if end is not None or len(new) < limit else "length"
        results.append(Caption(text, int(inputs["attention_mask"][row].sum()), len(new), reason))
    return results if details else [r.text for r in results]


def _processed(model, processor, images: list, prompts: list, padding_side: str):
    """Model inputs of a BLIP-2 batch on the model's device, pixel values in the model's dtype."""
    inputs = processor(images=images, text=[p or "" for p in prompts], padding=True, padding_side=padding_side,
                       return_tensors="pt")
    dtype = next(model.parameters()).dtype
    return {k: v.to(model.device, dtype) if k == "pixel_values" else v.to(model.device) for k, v in inputs.items()}


def blip2_model_inputs(model, processor, conversations: Sequence[list[dict]], padding_side: str = "left"):
    """What `chat.prepare` gives a BLIP-2: each conversation must be one user turn with one image and an
    optional prompt (`blip2_inputs` says why otherwise), so chat.generate, chat.stream and the server's
    batches work as for Idefics2."""
    from transformers import BatchFeature

    from .images import load_image

    pairs = [blip2_inputs(c) for c in conversations]
    images = [load_image(image) for image, _ in pairs]
    return BatchFeature(_processed(model, processor, images, [prompt for _, prompt in pairs], padding_side))


def blip2_inputs(messages: list[dict]) -> tuple[Any, str | None]:
    """The (image, prompt) of a conversation BLIP-2 can answer: one user turn with exactly one image
    and at most one text part (its prompt). Anything else is a MessagesError that says why."""
    from .messages import validate

    messages = validate(messages)
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) > 1:
        raise MessagesError(f"BLIP-2 answers one user turn with one image; this conversation has {len(turns)} turns. "
                            "It has no chat template and no memory of earlier turns: send only the last user turn "
                            "(with its image), or use an Idefics2 model for multi-turn chat.")
    if system:
        raise MessagesError("BLIP-2 has no system prompt; drop the system message (or use an Idefics2 model).")
    parts = turns[0]["content"]
    images = [p["image"] for p in parts if p["type"] == "image"]
    texts = [p["text"] for p in parts if p["type"] == "text"]
    if not images:
        raise MessagesError("BLIP-2 is an image-to-text model: it needs one image in the user turn, and this one has "
                            "none. Add an image (BLIP-2 cannot answer text alone).")
    if len(images) > 1:
        raise MessagesError(f"BLIP-2 reads one image per request; this turn has {len(images)}. Caption each image "
                            "separately (caption(vlm, images) batches them), or use an Idefics2 model to compare images.")
    if len(texts) > 1:
        raise MessagesError("BLIP-2 continues one prompt; this turn has several text parts. Join them into one.")
    return images[0], (texts[0] if texts else None)
