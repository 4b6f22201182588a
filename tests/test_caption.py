"""caption() for both families, and the captioning deployment on a local Ray instance (CPU, one replica)
over HTTP: the `openai` client, /caption, batching across concurrent requests, and 4xx for bad inputs."""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from _need import need

from vlm_course.caption import blip2_inputs, blip2_prompt, caption
from vlm_course.errors import GenerationError, ImageError, MessagesError
from vlm_course.images import image_to_data_uri
from vlm_course.messages import assistant, user
from vlm_course.shapes import random_scene
from vlm_course.tiny_blip2.evaluate import eval_tasks


@pytest.fixture(scope="module")
def blip2():
    from vlm_course.models import load_vlm

    return load_vlm("tiny-blip2", device="cpu")


IMAGES = [random_scene(seed).draw() for seed in (1, 2, 3)]


def test_idefics2_captions_through_a_chat_prompt(vlm):
    from vlm_course import chat

    got = caption(vlm, IMAGES, batch_size=2)
    want = [chat.generate(vlm, [user(im, "What do we see in this image?")], max_new_tokens=32).text for im in IMAGES]
    assert got == want
    assert caption(vlm, IMAGES[0], "How many shapes are there?") == \
        [chat.generate(vlm, [user(IMAGES[0], "How many shapes are there?")], max_new_tokens=32).text]


def test_caption_takes_one_image_or_a_list_and_paths(blip2, tmp_path):
    path = tmp_path / "scene.png"
    IMAGES[0].save(path)
    assert caption(blip2, IMAGES[0]) == caption(blip2, [str(path)]) == caption(blip2, [IMAGES[0]])


@pytest.mark.parametrize("call, error, words", [
    (lambda v: caption(v, []), MessagesError, "at least one image"),
    (lambda v: caption(v, IMAGES, ["a", "b"]), MessagesError, "3 images but 2 prompts"),
    (lambda v: caption(v, IMAGES, batch_size=0), GenerationError, "batch_size"),
    (lambda v: caption(v, IMAGES, max_new_tokens=0), GenerationError, "max_new_tokens"),
    (lambda v: caption(v, ["/no/such/image.png"]), ImageError, "image"),
])
def test_caption_bad_inputs(blip2, call, error, words):
    with pytest.raises(error, match=words):
        call(blip2)


@pytest.mark.parametrize("messages, words", [
    ([user("What is the capital of Italy?")], "needs one image"),
    ([user(IMAGES[0], IMAGES[1], "What is the difference?")], "one image per request"),
    ([user(IMAGES[0], "What do we see?"), assistant("a red circle."), user(IMAGES[1], "And now?")], "one user turn"),
    ([{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, user(IMAGES[0], "Hi")], "system"),
])
def test_what_blip2_cannot_do_is_a_clear_error(messages, words):
    with pytest.raises(MessagesError, match=words):
        blip2_inputs(messages)


def test_blip2_inputs_of_one_turn():
    image, prompt = blip2_inputs([user(IMAGES[0], blip2_prompt("Is there a square?"))])
    assert image is IMAGES[0] and prompt == "Question: is there a square? Answer:"
    assert blip2_inputs([user(IMAGES[0])])[1] is None


# --------------------------------------------------------------------------- vlm-course serve --model tiny-blip2


def _chat_body(image, text=None, **extra) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": image_to_data_uri(image)}}]
    return {"messages": [{"role": "user", "content": parts + ([{"type": "text", "text": text}] if text else [])}],
            **extra}


@pytest.fixture(scope="module")
def blip2_server(blip2):
    need("fastapi")
    from vlm_course.serve import ServerSettings, start_in_background

    with start_in_background(ServerSettings(max_batch_size=4), vlm=blip2) as server:
        yield server.url


@pytest.mark.slow
def test_the_openai_server_serves_blip2(blip2_server, blip2):
    openai = need("openai")
    tasks = eval_tasks("perturbed", 5, seed=9)
    # computed before the requests: the server's worker thread runs this same model object
    want = [caption(blip2, task.image, task.prompt or None)[0] for task in tasks]
    client = openai.OpenAI(base_url=blip2_server + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert client.models.list().data[0].id == "tiny-blip2"
    for task, text in zip(tasks, want):
        reply = client.chat.completions.create(model="tiny-blip2", temperature=0,
                                               messages=_chat_body(task.image, task.prompt)["messages"])
        assert reply.choices[0].message.content == text
    stream = client.chat.completions.create(model="tiny-blip2", temperature=0, stream=True,
                                            messages=_chat_body(tasks[0].image, tasks[0].prompt)["messages"])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want[0]


@pytest.mark.slow
def test_the_openai_server_refuses_what_blip2_cannot_do(blip2_server):
    import httpx

    image = _chat_body(IMAGES[0])["messages"][0]["content"]
    cases = {
        "text alone": ({"messages": [{"role": "user", "content": "What is the capital of Italy?"}]}, "needs one image"),
        "two images": ({"messages": [{"role": "user", "content": image + image}]}, "one image per request"),
        "a second turn": ({"messages": [{"role": "user", "content": image},
                                        {"role": "assistant", "content": "a red circle."},
                                        {"role": "user", "content": image}]}, "one user turn"),
    }
    for what, (body, words) in cases.items():
        response = httpx.post(blip2_server + "/v1/chat/completions", json={**body, "temperature": 0}, timeout=60)
        assert response.status_code == 400, (what, response.text)
        assert words in response.json()["error"]["message"], (what, response.json())


# --------------------------------------------------------------------------- the Ray Serve deployment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def expected(blip2):
    """caption()'s answers, computed before Ray starts (its processes would slow them down)."""
    tasks = eval_tasks("perturbed", 8, seed=3)
    return tasks, caption(blip2, [t.image for t in tasks], [t.prompt or None for t in tasks])


@pytest.fixture(scope="module")
def deployment(expected):
    need("ray.serve")
    need("fastapi")
    from vlm_course.serve.captioning import CaptioningConfig, start_captioning, stop_captioning

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    config = CaptioningConfig(model_id="tiny-blip2", batch_size=8, batch_wait_timeout_s=0.2, num_processing_threads=2,
                              max_new_tokens=32, num_replicas=1, ray_actor_options={"num_cpus": 1})
    url = start_captioning(config, port=free_port(), num_cpus=2)
    yield url
    stop_captioning()


def _body(task) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": image_to_data_uri(task.image)}}]
    return [{"role": "user", "content": parts + ([{"type": "text", "text": task.prompt}] if task.prompt else [])}]


@pytest.mark.ray
@pytest.mark.slow
def test_config_like_aana_hfblip2():
    need("ray.serve")
    from vlm_course.serve.captioning import CaptioningConfig, build_captioning_app

    config = CaptioningConfig(model_id="Salesforce/blip2-opt-2.7b", dtype="float16", batch_size=16,
                              num_processing_threads=4, max_new_tokens=64, num_replicas=2,
                              ray_actor_options={"num_gpus": 0.5})
    assert (config.model_id, config.dtype, config.batch_size, config.num_processing_threads, config.max_new_tokens) == \
        ("Salesforce/blip2-opt-2.7b", "float16", 16, 4, 64)
    assert build_captioning_app(config) is not None  # building the application loads nothing
    with pytest.raises(ValueError):
        CaptioningConfig(batch_size=0)


@pytest.mark.ray
@pytest.mark.slow
def test_openai_client_against_the_deployment(deployment, expected):
    openai = need("openai")
    tasks, want = expected
    client = openai.OpenAI(base_url=deployment + "/v1", api_key="unused", max_retries=0, timeout=120)
    name = client.models.list().data[0].id
    assert name == "tiny-blip2"
    for task, text in zip(tasks[:3], want[:3]):
        reply = client.chat.completions.create(model=name, messages=_body(task))
        assert reply.choices[0].message.content == text
        assert reply.choices[0].finish_reason == "stop" and reply.usage.prompt_tokens >= 9


@pytest.mark.ray
@pytest.mark.slow
def test_concurrent_requests_are_batched_together(deployment, expected, blip2):
    import httpx

    tasks, want = expected

    def one(task):
        body = {"images": [image_to_data_uri(task.image)], "prompt": task.prompt or None}
        response = httpx.post(deployment + "/caption", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()["captions"][0]

    with ThreadPoolExecutor(len(tasks)) as pool:
        got = list(pool.map(one, tasks))
    assert got == want  # batched with strangers or alone: the same greedy captions
    several = httpx.post(deployment + "/caption", json={"images": [image_to_data_uri(t.image) for t in tasks[:4]]},
                         timeout=120).json()["captions"]
    assert several == caption(blip2, [t.image for t in tasks[:4]])
    batches = httpx.get(deployment + "/health", timeout=30).json()["batches"]
    assert max(int(size) for size in batches) > 1, batches  # some generate held images of several requests


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("content, status, words", [
    ([{"type": "text", "text": "What is the capital of Italy?"}], 400, "needs one image"),
    ("two images", 400, "one image per request"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}], 400, "image"),
    ([{"type": "image_url", "image_url": {"url": "http://127.0.0.1/cat.png"}}], 400, "data:image"),
])
def test_bad_chat_requests_get_4xx(deployment, content, status, words):
    import httpx

    if content == "two images":
        uri = image_to_data_uri(IMAGES[0])
        content = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "image_url", "image_url": {"url": uri}}]
    response = httpx.post(deployment + "/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]},
                          timeout=60)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]


@pytest.mark.ray
@pytest.mark.slow
def test_other_bad_requests_get_4xx(deployment):
    import httpx

    uri = image_to_data_uri(IMAGES[0])
    image = [{"type": "image_url", "image_url": {"url": uri}}]
    second_turn = [{"role": "user", "content": image}, {"role": "assistant", "content": "a red circle."},
                   {"role": "user", "content": image}]
    cases = [
        ("/v1/chat/completions", {"messages": second_turn}, "one user turn"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": image}], "stream": True}, "stream"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": image}], "temperature": 0.8}, "greedily"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": image}], "max_tokens": 500}, "limit"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/caption", {"images": []}, "images"),
        ("/caption", {"images": ["not base64 at all!"]}, "image"),
        ("/caption", {"images": [uri] * 17}, "at most 16"),
    ]
    for path, body, words in cases:
        response = httpx.post(deployment + path, json=body, timeout=60)
        assert 400 <= response.status_code < 500, (path, body, response.text)
        assert words in response.json()["error"]["message"], (path, response.json())
