"""Lesson 07 exercise: write an OpenAI chat-completions request body by hand, and have the server answer it.

The task: a body that asks "How many shapes are there?" about one image sent as a data URI, decoded
greedily, streamed, with at most 16 new tokens. `check_request` checks it with the server's own
request schema, then (given a running server's URL) sends it and compares the streamed answer with
`chat.generate` on the same conversation.
"""

from __future__ import annotations

import json

QUESTION = "How many shapes are there?"
MAX_TOKENS = 16


def _problems(body) -> list[str]:
    from pydantic import ValidationError

    from ..serve.schemas import ChatCompletionRequest

    if not isinstance(body, dict):
        return [f"The body should be a dict (the JSON object you would POST), got {type(body).__name__}."]
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        return [f"The server would refuse it (400): {err['loc']}: {err['msg']}" for err in e.errors()[:3]]
    problems = []
    if request.temperature != 0:
        problems.append(f"temperature is {request.temperature}; greedy decoding needs temperature 0.")
    if not request.stream:
        problems.append("stream is not true: the answer should arrive as server-sent events.")
    if request.max_new_tokens is None or request.max_new_tokens > MAX_TOKENS:
        problems.append(f"max_tokens should be set to at most {MAX_TOKENS}, got {request.max_new_tokens}.")
    users = [m for m in request.messages if m.role == "user"]
    if len(request.messages) != 1 or not users or isinstance(users[0].content, str):
        problems.append("Send exactly one user message whose content is a list of parts (an image_url and a text).")
        return problems
    parts = users[0].content
    images = [p for p in parts if p.type == "image_url"]
    texts = [p.text for p in parts if p.type == "text"]
    if len(images) != 1 or not images[0].image_url.url.startswith("data:image/"):
        problems.append("Include exactly one image_url part whose url is a data:image/...;base64 URI "
                        "(vlm_course.images.image_to_data_uri makes one).")
    if texts != [QUESTION]:
        problems.append(f"The text part should be exactly {QUESTION!r}, got {texts!r}.")
    return problems


def check_request(body, base_url: str | None = None, vlm=None) -> bool:
    """Print a verdict on the request body; with `base_url` (and `vlm`) also send it and check the answer."""
    if body is None:
        print("Not answered yet: set `body` to your request (a dict) and run the check again.")
        return False
    problems = _problems(body)
    if problems:
        print("Not yet:\n- " + "\n- ".join(problems))
        return False
    if base_url is None:
        print("The body is right. Pass base_url= (and vlm=) to send it to a running server too.")
        return True
    import httpx

    from .. import chat
    from ..images import load_image

    pieces, done = [], False
    with httpx.stream("POST", base_url.rstrip("/") + "/v1/chat/completions", json=body, timeout=120) as r:
        if r.status_code != 200:
            print(f"The server answered {r.status_code}: {r.read().decode()[:300]}")
            return False
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                for choice in json.loads(line[6:]).get("choices", []):
                    pieces.append(choice["delta"].get("content") or "")
    answer = "".join(pieces)
    if not done:
        print("The stream did not end with 'data: [DONE]'.")
        return False
    if vlm is not None:
        url = next(p["image_url"]["url"] for p in body["messages"][0]["content"] if p["type"] == "image_url")
        max_new_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        want = chat.generate(vlm, [chat.user(load_image(url), QUESTION)], max_new_tokens=max_new_tokens).text
        if answer != want:
            print(f"The server streamed {answer!r} but chat.generate says {want!r}: they should be equal.")
            return False
    print(f"Correct: the server streamed {answer!r} for your request.")
    return True
