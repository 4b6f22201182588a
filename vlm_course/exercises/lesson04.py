"""Lesson 04 exercise: which attention backend does attn="auto" choose on this machine, and is it right?"""

from __future__ import annotations

from ..models import ATTENTION_BACKENDS, available_attention, pick_device


def check_auto_backend(answer, device: str | None = None) -> bool:
    """True when `answer` names the backend load_vlm(attn="auto") picks on this machine (or `device`)."""
    if answer is None:
        print("Not answered yet: set `answer` to the backend name (a str such as 'eager') and run the check again.")
        return False
    if not isinstance(answer, str) or answer not in ATTENTION_BACKENDS:
        print(f"{answer!r} is not a backend name. Choose one of: {', '.join(ATTENTION_BACKENDS)}.")
        return False
    available = available_attention(pick_device(device))
    if answer == available[0]:
        print(f"Correct: 'auto' picks {answer!r} here, the first of the available backends {available}.")
        return True
    if answer not in available:
        print(f"Not quite: {answer!r} cannot run on this machine at all. Available here: {available}.")
    else:
        print(f"Not quite: {answer!r} runs here, but 'auto' prefers another one. Print vlm.attn after "
              "load_vlm(attn='auto'), or available_attention(vlm.device), and look at the order.")
    return False
