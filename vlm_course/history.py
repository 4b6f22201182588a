"""A chat history that keeps every turn where it belongs.

    chat = ChatHistory()
    chat.ask(vlm, image, "What do we see in this image?")   # -> Reply; the history now has both turns
    chat.ask(vlm, "And how about this image?", other_image)
    chat.messages                                           # the whole conversation, transformers' format

The assistant turn always holds the model's reply: a well-known bug in public demos stores the
user's text there instead, and the model then sees itself "saying" the question on the next turn.
A failed generation leaves the history as it was.
"""

from __future__ import annotations

from typing import Any, Iterator

from .errors import MessagesError
from .messages import assistant, image_sources, user, validate


class ChatHistory:
    """The turns of one conversation, alternating user and assistant."""

    def __init__(self, messages: list[dict] | None = None):
        self.messages: list[dict] = validate(messages, for_generation=False) if messages else []

    def add_user(self, *parts: Any) -> dict:
        """Append a user turn (strings are text, anything else an image). Two user turns in a row are refused."""
        if self.messages and self.messages[-1]["role"] == "user":
            raise MessagesError("The last user turn has no answer yet: add the assistant's reply "
                                "(add_assistant) or use ask(), which does both.")
        turn = validate([user(*parts)], for_generation=False)[0]
        self.messages.append(turn)
        return turn

    def add_assistant(self, reply) -> dict:
        """Append the assistant's turn: a Reply (its .text is stored) or a string."""
        text = getattr(reply, "text", reply)
        if not isinstance(text, str):
            raise MessagesError(f"add_assistant takes a Reply or a string, got {type(reply).__name__}.")
        if not self.messages or self.messages[-1]["role"] != "user":
            raise MessagesError("An assistant turn must answer a user turn: add the user's question first.")
        turn = assistant(text)
        self.messages.append(turn)
        return turn

    def ask(self, vlm, *parts: Any, **options):
        """Add a user turn, generate the reply, store it as the assistant turn, and return it."""
        from .chat import generate  # chat imports torch; keep this module cheap to import

        turn = user(*parts)
        if self.messages and self.messages[-1]["role"] == "user":
            raise MessagesError("The last user turn has no answer yet; add_assistant(...) first.")
        reply = generate(vlm, self.messages + [turn], **options)  # raises before the history changes
        self.messages += [validate([turn], for_generation=False)[0], assistant(reply.text)]
        return reply

    def undo(self) -> None:
        """Forget the last exchange (the last user turn and its answer, if any)."""
        while self.messages:
            role = self.messages.pop()["role"]
            if role == "user":
                break

    @property
    def images(self) -> list[Any]:
        return image_sources(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.messages)

    def __repr__(self) -> str:
        lines = []
        for m in self.messages:
            parts = ["<image>" if p["type"] == "image" else p["text"] for p in m["content"]]
            lines.append(f"{m['role']}: {' '.join(parts)}")
        return "ChatHistory(\n  " + "\n  ".join(lines) + "\n)" if lines else "ChatHistory()"
