"""Client side: a transformers conversation -> OpenAI chat messages (images as data URIs).

    client.chat.completions.create(model=..., messages=to_openai_messages([user(img, "What is this?")]))

The server does the reverse (`vlm_course.serve.app.to_conversation`).
"""

from __future__ import annotations

from ..images import image_to_data_uri
from ..messages import validate


def image_part(image, format: str = "PNG") -> dict:
    """An OpenAI image_url part for a PIL image (or anything load_image takes), as a data URI."""
    from PIL import Image

    Image.init()  # registers the formats' MIME types, which image_to_data_uri looks up
    return {"type": "image_url", "image_url": {"url": image_to_data_uri(image, format=format)}}


def to_openai_messages(conversation: list[dict]) -> list[dict]:
    """Each text part stays a text part; each image becomes an image_url part with a data URI."""
    out = []
    for message in validate(conversation, for_generation=False):
        parts = [{"type": "text", "text": p["text"]} if p["type"] == "text" else image_part(p["image"])
                 for p in message["content"]]
        out.append({"role": message["role"], "content": parts})
    return out
