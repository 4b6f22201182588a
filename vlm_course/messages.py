"""Chat messages in transformers' format: build them, check them, and find their images.

A conversation is a list of {"role": ..., "content": [parts]} where each part is
{"type": "text", "text": "..."} or {"type": "image", "image": X} (X: anything `load_image` takes;
"url" and "path" keys are accepted too). Images travel inside the messages, in order.
No torch here: this module is cheap to import.
"""

from __future__ import annotations

from typing import Any

from .errors import MessagesError

ROLES = ("system", "user", "assistant")
IMAGE_KEYS = ("image", "url", "path")
# Tokens the processor inserts itself; typed by hand they would break the image/placeholder count.
RESERVED = ("<image>", "<fake_token_around_image>", "<end_of_utterance>")


def _is_pil(obj) -> bool:
    return type(obj).__module__.startswith("PIL.")


def user(*parts: Any) -> dict:
    """A user turn from strings (text) and images (PIL images, paths, URLs, bytes), in order."""
    content = [{"type": "text", "text": p} if isinstance(p, str) and not _looks_like_image_ref(p)
               else {"type": "image", "image": p} for p in parts]
    return {"role": "user", "content": content}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _looks_like_image_ref(text: str) -> bool:
    # user("cat.png", "What is this?"): a string naming an image file or URL is an image, not text.
    lowered = text.lower()
    return (lowered.startswith(("http://", "https://", "data:image/"))
            or (" " not in text and lowered.endswith((".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"))))


def validate(messages: Any, *, for_generation: bool = True) -> list[dict]:
    """Check a conversation and return a normalised copy (image parts as {"type": "image", "image": X}).

    Raises MessagesError for each trap a learner meets: plain-string content (Idefics2's template
    silently drops it), unknown roles or part types, empty text, hand-typed <image> tokens, and a
    conversation that does not end with a user turn when a reply is wanted.
    """
    if isinstance(messages, dict):
        raise MessagesError("Expected a list of messages (a conversation), got a single message dict. "
                            "Wrap it in a list: [message].")
    if not isinstance(messages, (list, tuple)) or not messages:
        raise MessagesError("A conversation must be a non-empty list of messages like "
                            "[{'role': 'user', 'content': [{'type': 'text', 'text': 'Hello'}]}].")
    out = []
    for i, message in enumerate(messages):
        where = f"message {i}"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise MessagesError(f"{where} must be a dict with 'role' and 'content' keys, got {message!r:.80}.")
        role = message["role"]
        if role not in ROLES:
            raise MessagesError(f"{where} has role {role!r}; use one of {', '.join(ROLES)}.")
        content = message["content"]
        if isinstance(content, str):
            raise MessagesError(
                f"{where} has plain-string content {content!r:.60}. Idefics2's chat template silently drops "
                "plain strings (the model would see an empty turn). Write a list of typed parts instead: "
                "[{'type': 'text', 'text': ...}], or build the turn with vlm_course.messages.user(...).")
        if not isinstance(content, (list, tuple)) or not content:
            raise MessagesError(f"{where} needs a non-empty list of content parts.")
        parts = [_part(part, f"{where}, part {j}", role) for j, part in enumerate(content)]
        out.append({"role": role, "content": parts})
    if for_generation and out[-1]["role"] != "user":
        raise MessagesError(f"The conversation ends with a {out[-1]['role']!r} turn; the model answers a user turn. "
                            "Append a user message with your next question.")
    return out


def _part(part: Any, where: str, role: str) -> dict:
    if not isinstance(part, dict) or "type" not in part:
        raise MessagesError(f"{where} must be a dict with a 'type' ('text' or 'image'), got {part!r:.80}.")
    kind = part["type"]
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str) or (not text.strip() and role != "assistant"):  # a model may say nothing
            raise MessagesError(f"{where} is a text part with no text; give it a non-empty 'text' string.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate such as "\ud800": no tokenizer can read it
            raise MessagesError(f"{where} holds text that is not valid Unicode ({e.reason} at position {e.start}); "
                                "decode the text properly (a lone surrogate is half of a character).") from None
        for token in RESERVED:
            if token in text:
                raise MessagesError(
                    f"{where} contains {token!r} typed by hand. The processor inserts image and end-of-turn "
                    "tokens itself; a hand-typed one no longer matches the images. Put an image part "
                    "{'type': 'image', 'image': ...} where the image goes instead.")
        return {"type": "text", "text": text}
    if kind == "image":
        if role == "assistant":
            raise MessagesError(f"{where}: an assistant turn cannot contain images; put them in a user turn.")
        keys = [k for k in IMAGE_KEYS if part.get(k) is not None]
        if not keys:
            raise MessagesError(f"{where} is an image part without an image: give 'image' (a PIL image, path, "
                                "URL, base64 or bytes), 'url' or 'path'.")
        return {"type": "image", "image": part[keys[0]]}
    if kind == "image_url":
        raise MessagesError(f"{where} is an OpenAI 'image_url' part. In transformers' format write "
                            "{'type': 'image', 'url': ...}; the vlm-course server converts OpenAI requests for you.")
    raise MessagesError(f"{where} has type {kind!r}; use 'text' or 'image'.")


def image_sources(messages: list[dict]) -> list[Any]:
    """The images of a (validated) conversation, in the order their placeholders appear."""
    return [part["image"] for m in messages for part in m["content"] if part["type"] == "image"]
