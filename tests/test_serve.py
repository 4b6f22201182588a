"""The OpenAI-compatible server, tested with the official `openai` client against real servers on 127.0.0.1.

Answers are compared with `chat.generate` on the same conversation (equality), never with
hard-coded strings. Image URLs are served by a real http.server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from _loopback import LOOPBACK_ONLY
from _need import need  # skips outside CI, fails in CI

openai = need("openai")
need("fastapi")

from vlm_course import chat  # noqa: E402
from vlm_course.serve.app import ServerSettings  # noqa: E402
from vlm_course.serve.loadtest import fixed_length_bias  # noqa: E402
from vlm_course.serve.openai_format import image_part, to_openai_messages  # noqa: E402
from vlm_course.serve.server import start_in_background  # noqa: E402
from vlm_course.shapes import random_scene  # noqa: E402
from vlm_course.shapes.questions import make_sample  # noqa: E402

QUESTION = "What do we see in this image?"


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """A directory of scene PNGs, served over HTTP on 127.0.0.1 by the `image_site` fixture."""
    d = tmp_path_factory.mktemp("images")
    for seed in range(4):
        random_scene(seed).draw().save(d / f"scene{seed}.png")
    (d / "not-an-image.png").write_bytes(b"hello, I am text")
    return d


@pytest.fixture(scope="module")
def image_site(image_dir):
    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(image_dir), **k)

        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path.startswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", "/scene0.png")
                self.end_headers()
                return
            super().do_GET()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(vlm, image_dir):
    """Batching on, loopback image URLs allowed explicitly, local paths allowed under image_dir."""
    settings = ServerSettings(max_batch_size=8, max_wait_ms=30, allow_private_urls=True,
                              allow_dirs=[str(image_dir)], max_images=3, max_body_bytes=2_000_000)
    with start_in_background(settings, vlm=vlm, network=LOOPBACK_ONLY) as srv:
        yield srv


@pytest.fixture(scope="module")
def strict_server(vlm):
    """Default settings (refuse private URLs and local paths), plus an API key."""
    with start_in_background(ServerSettings(api_key="sesame"), vlm=vlm, network=LOOPBACK_ONLY) as srv:
        yield srv


@pytest.fixture
def client(server, vlm):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def ask(client, vlm, messages, **options):
    options.setdefault("temperature", 0)
    options.setdefault("max_tokens", 32)
    return client.chat.completions.create(model=vlm.name, messages=messages, **options)


def expected(vlm, conversation, **options):
    options.setdefault("max_new_tokens", 32)
    return chat.generate(vlm, conversation, **options)


def describe(seed):
    scene = random_scene(seed)
    return [chat.user(scene.draw(), QUESTION)]


# --------------------------------------------------------------------------- the happy paths


def test_health_and_models(server, client, vlm):
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == vlm.name
    assert [m.id for m in client.models.list().data] == [vlm.name]


def test_plain_request_equals_chat_generate(client, vlm):
    conversation = describe(1)
    reply = ask(client, vlm, to_openai_messages(conversation))
    want = expected(vlm, conversation)
    assert reply.choices[0].message.content == want.text
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == want.finish_reason
    assert reply.usage.prompt_tokens == want.usage.prompt_tokens
    assert reply.usage.completion_tokens == want.usage.completion_tokens
    assert reply.usage.total_tokens == want.usage.total_tokens
    extra = reply.usage.model_extra
    assert 0 < extra["time_to_first_token"] <= extra["seconds"]
    assert extra["prompt_tokens_per_second"] > 0


def test_text_only_and_plain_string_content(client, vlm):
    reply = ask(client, vlm, [{"role": "user", "content": "Hello, who are you?"}])
    assert reply.choices[0].message.content == expected(vlm, [chat.user("Hello, who are you?")]).text


def test_streaming_pieces_join_to_the_reply(client, vlm):
    conversation = describe(2)
    want = expected(vlm, conversation)
    chunks = list(ask(client, vlm, to_openai_messages(conversation), stream=True,
                      stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == want.text
    assert len([p for p in pieces if p]) >= 2  # really streamed, not one blob
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [want.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == want.usage.completion_tokens


def test_raw_sse_ends_with_done(server, vlm):
    body = {"model": vlm.name, "messages": to_openai_messages(describe(3)), "stream": True, "temperature": 0}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


@pytest.mark.parametrize("family", ["two_images", "multi_turn"])
def test_several_images_and_turns(client, vlm, family):
    sample = make_sample(family, random.Random(5))
    reply = ask(client, vlm, to_openai_messages(sample.prompt))
    assert reply.choices[0].message.content == expected(vlm, sample.prompt).text


def test_url_image_equals_base64(client, vlm, image_site):
    url_messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"{image_site}/scene1.png"}},
                                                 {"type": "text", "text": QUESTION}]}]
    redirected = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"{image_site}/redirect"}},
                                               {"type": "text", "text": QUESTION}]}]
    by_url = ask(client, vlm, url_messages).choices[0].message.content
    assert by_url == ask(client, vlm, to_openai_messages(describe(1))).choices[0].message.content
    assert ask(client, vlm, redirected).choices[0].message.content == expected(vlm, describe(0)).text


def test_allowed_local_path(client, vlm, image_dir):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(image_dir / "scene2.png")}},
                                             {"type": "text", "text": QUESTION}]}]
    assert ask(client, vlm, messages).choices[0].message.content == expected(vlm, describe(2)).text


def test_stop_and_max_tokens(client, vlm):
    conversation = describe(6)
    full = expected(vlm, conversation).text
    word = full.split()[1] if len(full.split()) > 1 else full
    stopped = ask(client, vlm, to_openai_messages(conversation), stop=[word])
    assert stopped.choices[0].message.content == expected(vlm, conversation, stop=[word]).text
    assert word not in stopped.choices[0].message.content
    short = ask(client, vlm, to_openai_messages(conversation), max_tokens=2)
    assert short.usage.completion_tokens <= 2
    assert short.choices[0].message.content == expected(vlm, conversation, max_new_tokens=2).text


def test_streamed_stop_string_that_starts_inside_a_token(client, vlm):
    """The streamed pieces never show the start of a stop string: a stop that begins inside a word (and
    so inside a token) is held back until it is known, and the pieces join to the non-streamed answer."""
    conversation = describe(6)
    words = expected(vlm, conversation).text.split()
    assert len(words) >= 4, words
    stop = words[2][1:] + " " + words[3][:2]  # the tail of the third word, a space, the fourth's start
    want = expected(vlm, conversation, stop=[stop])
    assert stop not in want.text and len(want.text) < len(" ".join(words))
    chunks = ask(client, vlm, to_openai_messages(conversation), stop=[stop], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert ask(client, vlm, to_openai_messages(conversation), stop=[stop]).choices[0].message.content == want.text


def test_seeded_sampling_is_reproducible(client, vlm):
    conversation = [chat.user("Tell me something.")]
    options = dict(temperature=1.5, top_p=0.95, seed=1234, max_tokens=24)
    a = ask(client, vlm, to_openai_messages(conversation), **options).choices[0].message.content
    b = ask(client, vlm, to_openai_messages(conversation), **options).choices[0].message.content
    assert a == b == expected(vlm, conversation, temperature=1.5, top_p=0.95, seed=1234, max_new_tokens=24).text


# --------------------------------------------------------------------------- batching


def test_concurrent_requests_are_batched_with_identical_answers(server, vlm):
    conversations = [describe(10 + i) for i in range(6)] + [make_sample("two_images", random.Random(i)).prompt
                                                            for i in range(3)] + [[chat.user("Hello there")]]
    before = httpx.get(server.url + "/health").json()["batcher"]

    def one(conversation):
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
        return ask(c, vlm, to_openai_messages(conversation), max_tokens=24).choices[0].message.content

    with ThreadPoolExecutor(len(conversations)) as pool:
        got = list(pool.map(one, conversations))
    assert got == [expected(vlm, c, max_new_tokens=24).text for c in conversations]
    after = httpx.get(server.url + "/health").json()["batcher"]
    assert after["rows"] - before["rows"] == len(conversations)
    assert after["batches"] - before["batches"] < len(conversations)  # some requests shared a generate
    assert after["largest_batch"] > 1


def test_concurrent_streams_are_batched(server, vlm):
    conversations = [describe(20 + i) for i in range(5)]

    def one(conversation):
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
        return "".join(ch.choices[0].delta.content or "" for ch in
                       ask(c, vlm, to_openai_messages(conversation), stream=True) if ch.choices)

    with ThreadPoolExecutor(len(conversations)) as pool:
        got = list(pool.map(one, conversations))
    assert got == [expected(vlm, c).text for c in conversations]


def test_client_disconnect_stops_generation(server, vlm):
    """A stream that could run to the end of the context (450 tokens) (end tokens banned by logit_bias) is dropped after a few chunks."""
    before = httpx.get(server.url + "/health").json()["batcher"]["cancelled"]
    body = {"model": vlm.name, "messages": to_openai_messages(describe(7)), "stream": True, "temperature": 0,
            "max_tokens": 450, "logit_bias": fixed_length_bias(vlm)}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i >= 6:
                    break
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stats = httpx.get(server.url + "/health").json()["batcher"]
        if stats["cancelled"] > before and stats["active"] == 0:
            break
        time.sleep(0.2)
    assert stats["cancelled"] > before, stats
    assert stats["cancelled_tokens"][-1] < 450


# --------------------------------------------------------------------------- errors: OpenAI-shaped 4xx


def error_of(response) -> dict:
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "code"}, body
    assert body["error"]["message"]
    return body["error"]


def post(server, body=None, content=None, headers=None):
    return httpx.post(server.url + "/v1/chat/completions", json=body, content=content, headers=headers, timeout=60)


def msg(*parts, role="user"):
    return {"role": role, "content": list(parts)}


TEXT = {"type": "text", "text": QUESTION}


def image(url):
    return {"type": "image_url", "image_url": {"url": url}}


def test_malformed_json(server):
    r = post(server, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in error_of(r)["message"]


@pytest.mark.parametrize("body, code", [
    ({"messages": [msg(TEXT, role="tool")]}, "invalid_request"),
    ({"messages": []}, "invalid_request"),
    ({"messages": [msg(TEXT), msg({"type": "text", "text": "hi"}, role="assistant")]}, "invalid_messages"),
    ({"messages": [msg({"type": "audio", "data": "x"})]}, "invalid_request"),
    ({"messages": [msg({"type": "text", "text": "   "})]}, "invalid_messages"),
    ({"messages": [msg(TEXT)], "max_tokens": 0}, "invalid_request"),
    ({"messages": [msg(TEXT)], "max_tokens": 10**6}, "invalid_request"),
    ({"messages": [msg(TEXT)], "temperature": -1}, "invalid_request"),
    ({"messages": [msg(TEXT)], "logit_bias": {"999999": 5}}, "invalid_request"),
    ({"messages": [msg(TEXT)], "n": 3}, "unsupported_parameter"),
    ({"messages": "hello"}, "invalid_request"),
])
def test_bad_requests(server, body, code):
    r = post(server, body)
    assert r.status_code == 400, r.text
    assert error_of(r)["code"] == code


def test_bad_images(server, image_dir, tmp_path, vlm):
    cases = {
        "invalid_image": [image("data:image/png;base64," + base64.b64encode(b"not a png at all").decode()),
                          image("data:image/png;base64,@@@@"),
                          image(f"file://{image_dir}/not-an-image.png")],
        "path_not_allowed": [image(str(tmp_path / "elsewhere.png")), image(f"{image_dir}/../../etc/passwd")],
        "invalid_image_url": [image("ftp://example.org/cat.png"), image("cat.png")],
    }
    for code, parts in cases.items():
        for part in parts:
            r = post(server, {"messages": [msg(part, TEXT)]})
            assert r.status_code == 400, (part, r.text)
            assert error_of(r)["code"] == code, (part, r.text)
    too_many = post(server, {"messages": [msg(*[image_part(random_scene(i).draw()) for i in range(4)], TEXT)]})
    assert too_many.status_code == 400 and error_of(too_many)["code"] == "too_many_images"


def test_url_download_errors(server, image_site):
    missing = post(server, {"messages": [msg(image(f"{image_site}/missing.png"), TEXT)]})
    assert missing.status_code == 400 and "404" in error_of(missing)["message"]
    text = post(server, {"messages": [msg(image(f"{image_site}/not-an-image.png"), TEXT)]})
    assert text.status_code == 400 and error_of(text)["code"] == "invalid_image"


def test_oversize_body(server):
    big = "data:image/png;base64," + "A" * 2_100_000
    r = post(server, {"messages": [msg(image(big), TEXT)]})
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"


def test_unknown_model_and_route(server):
    r = post(server, {"model": "gpt-17", "messages": [msg(TEXT)]})
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"
    r = httpx.get(server.url + "/v1/nothing-here")
    assert r.status_code == 404 and error_of(r)


def test_default_server_refuses_loopback_urls_and_paths(strict_server, vlm, image_site, image_dir):
    client = openai.OpenAI(base_url=strict_server.url + "/v1", api_key="sesame", max_retries=0)
    for url, code in [(f"{image_site}/scene1.png", "url_not_allowed"),
                      (f"http://localhost:{image_site.rsplit(':', 1)[1]}/scene1.png", "url_not_allowed"),
                      (str(image_dir / "scene1.png"), "path_not_allowed")]:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=vlm.name, messages=[msg(image(url), TEXT)])
        assert info.value.body["code"] == code
    # The same server answers a data URI.
    reply = client.chat.completions.create(model=vlm.name, messages=to_openai_messages(describe(1)), temperature=0,
                                           max_tokens=32)
    assert reply.choices[0].message.content == expected(vlm, describe(1)).text


def test_api_key(strict_server, vlm):
    for key in ("wrong", ""):
        client = openai.OpenAI(base_url=strict_server.url + "/v1", api_key=key or "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    r = httpx.get(strict_server.url + "/v1/models")
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
    assert httpx.get(strict_server.url + "/health").status_code == 200  # health needs no key


# --------------------------------------------------------------------------- the command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_cli_serve(vlm):
    port = free_port()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "vlm_course.cli", "serve", "--port", str(port), "--max-batch-size", "4",
                             "--log-level", "warning"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()["status"] == "ok":
                    break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        reply = ask(client, vlm, to_openai_messages(describe(4)))
        assert reply.choices[0].message.content == expected(vlm, describe(4)).text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
