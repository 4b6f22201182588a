"""Lesson 07 exercise: write an OpenAI chat-completions request body by hand, and have the server answer it.

The task: a body that asks "How many shapes are there?" about the image of scene 3 sent as a data URI,
decoded greedily, streamed, with at most 16 new tokens. `check_request(body, vlm)` checks it with the
server's own request schema and checks that its image is scene 3's drawing; then it starts a server on
`vlm` (or uses `base_url`, a server running in this process on the same `vlm`), sends the body, and checks
that the model really ran on that image and question and that the server streamed the model's reply.
The placeholder None is "not solved yet"; anything wrong raises ExerciseError.
"""

from __future__ import annotations

import json

from .check import ModelWatch, correct, expected_inputs, explain_mismatch, matching_call, not_solved, reply_text, \
    same_image, wrong

QUESTION = "How many shapes are there?"
MAX_TOKENS = 16
SEED = 3


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


def check_request(body, vlm, base_url: str | None = None) -> bool | None:
    """True when `body` is the exercise's request and a server on `vlm` answers it by running the model on it."""
    import httpx

    from ..chat import user
    from ..errors import VLMCourseError
    from ..images import load_image
    from ..shapes import random_scene

    if body is None:
        return not_solved("set `body` to your request (a dict) and run the check again.")
    problems = _problems(body)
    if problems:
        raise wrong("\n- " + "\n- ".join(problems))
    url = next(p["image_url"]["url"] for p in body["messages"][0]["content"] if p["type"] == "image_url")
    try:
        image = load_image(url)
    except VLMCourseError as e:
        raise wrong(f"the image_url part does not hold an image the server can read: {e}") from e
    messages = [user(image, QUESTION)]
    scene_pixels = expected_inputs(vlm, [user(random_scene(SEED).draw(), QUESTION)])["pixel_values"]
    if not same_image(vlm, expected_inputs(vlm, messages)["pixel_values"], scene_pixels):
        raise wrong(f"the image in your data URI is not the drawing of scene {SEED} (random_scene({SEED}).draw()).")

    def send(base: str) -> tuple[str, bool]:
        pieces, done = [], False
        with httpx.stream("POST", base.rstrip("/") + "/v1/chat/completions", json=body, timeout=120) as r:
            if r.status_code != 200:
                raise wrong(f"the server answered {r.status_code}: {r.read().decode()[:300]}")
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    for choice in json.loads(line[6:]).get("choices", []):
                        pieces.append(choice["delta"].get("content") or "")
        return "".join(pieces), done

    with ModelWatch(vlm) as watch:
        if base_url is None:
            from ..serve import ServerSettings, start_in_background

            with start_in_background(ServerSettings(), vlm=vlm) as server:
                answer, done = send(server.url)
        else:
            answer, done = send(base_url)
        watch.settle()
    if not done:
        raise wrong("the stream did not end with 'data: [DONE]'.")
    call = matching_call(vlm, watch, messages)
    if call is None:
        raise wrong(explain_mismatch(vlm, watch, messages, "the server") +
                    (" Is base_url a server started in this process on this vlm?" if base_url else ""))
    if answer != reply_text(vlm, call):
        raise wrong(f"the server streamed {answer!r}, which is not the model's reply to your request.")
    return correct(f"the server ran the model on scene {SEED} and your question, and streamed its reply {answer!r}.")
