"""Issue 16 against a real server on 127.0.0.1: bounded cost per request, no 500s, the OpenAI fields.

Each test names the finding it covers. Image URLs reach only loopback: the servers get
`_loopback.LOOPBACK_ONLY`, whose connect refuses anything else and whose resolver does no DNS.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time

import httpx
import pytest
import torch
from _loopback import LOOPBACK_ONLY
from _need import need  # skips outside CI, fails in CI
from PIL import Image

need("hypothesis")
need("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vlm_course import chat
from vlm_course.errors import GenerationError, MessagesError
from vlm_course.serve.loadtest import fixed_length_bias
from vlm_course.serve.openai_format import to_openai_messages
from vlm_course.serve.settings import ServerSettings
from vlm_course.serve.server import start_in_background
from vlm_course.shapes import random_scene

QUESTION = "What do we see in this image?"


@pytest.fixture(scope="module")
def server(vlm, tmp_path_factory):
    allowed = tmp_path_factory.mktemp("allowed")
    random_scene(1).draw().save(allowed / "scene1.png")
    settings = ServerSettings(max_batch_size=4, max_wait_ms=20, allow_dirs=[str(allowed)], max_body_bytes=3_000_000)
    with start_in_background(settings, vlm=vlm, network=LOOPBACK_ONLY) as srv:
        srv.allowed = allowed
        yield srv


@pytest.fixture(scope="module")
def keyed(vlm):
    with start_in_background(ServerSettings(api_key="sesame"), vlm=vlm, network=LOOPBACK_ONLY) as srv:
        yield srv


def post(server, body=None, content=None, headers=None, timeout=60):
    if body is not None:
        content = json.dumps(body).encode()
        headers = {"content-type": "application/json", **(headers or {})}
    return httpx.post(server.url + "/v1/chat/completions", content=content, headers=headers, timeout=timeout)


def error_of(r) -> dict:
    assert r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] and err["code"], err
    return err


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_msg(*urls, text=QUESTION):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": u}} for u in urls]
             + [{"type": "text", "text": text}]}]


def describe(seed):
    return [chat.user(random_scene(seed).draw(), QUESTION)]


# --------------------------------------------------------------------------- 1. memory bombs


def test_pixel_bombs_are_refused_from_their_headers(server):
    bomb = data_uri(png_bytes(Image.new("L", (6000, 6000), 0)))  # ~35 KB, 36 M pixels
    r = post(server, {"messages": image_msg(*[bomb] * 8)})
    err = error_of(r)
    assert r.status_code == 400 and err["code"] == "invalid_image" and "36,000,000 pixels" in err["message"]


def test_the_request_pixel_budget(server, vlm):
    policy = httpx.get(server.url + "/health").json()["images"]
    per_image, per_request = policy["max_image_pixels"], policy["max_request_pixels"]
    side = int(per_image ** 0.5)
    assert per_request < 3 * side * side  # three images of the largest size exceed the request's budget
    big = data_uri(png_bytes(Image.new("RGB", (side, side), (255, 255, 255))))
    r = post(server, {"messages": image_msg(big, big, big), "max_tokens": 2})
    assert r.status_code == 400 and "per request" in error_of(r)["message"]
    one = post(server, {"messages": image_msg(big), "max_tokens": 2, "temperature": 0})
    assert one.status_code == 200, one.text


def test_large_images_are_decoded_at_the_processors_size(server, vlm):
    """A 1024x1024 scene sent as PNG gives the answer of the same scene drawn at 128 px: the server keeps
    an image no larger than 2 x the processor's edge (128 for the tiny model)."""
    policy = httpx.get(server.url + "/health").json()["images"]
    assert policy["max_side"] == 2 * vlm.processor.image_processor.size["longest_edge"]
    scene = random_scene(3)
    r = post(server, {"messages": image_msg(data_uri(png_bytes(scene.draw(1024)))), "temperature": 0, "max_tokens": 24})
    assert r.status_code == 200, r.text
    shrunk = scene.draw(1024).resize((128, 128), Image.Resampling.BICUBIC, reducing_gap=3.0)
    want = chat.generate(vlm, [chat.user(shrunk, QUESTION)], max_new_tokens=24).text
    assert r.json()["choices"][0]["message"]["content"] == want


# --------------------------------------------------------------------------- 2. prompts and the context


def test_a_1mb_prompt_is_refused_before_any_compute(server):
    before = httpx.get(server.url + "/health").json()["batcher"]["requests"]
    r = post(server, {"messages": [{"role": "user", "content": "tell me about red circles. " * 40_000}]})
    err = error_of(r)
    assert r.status_code == 400 and err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert "512" in err["message"]
    assert httpx.get(server.url + "/health").json()["batcher"]["requests"] == before  # never reached the model


def test_prompt_plus_max_tokens_over_the_context(server, vlm):
    r = post(server, {"messages": to_openai_messages(describe(1)), "max_tokens": 500})
    err = error_of(r)
    assert err["code"] == "context_length_exceeded" and "max_tokens=500" in err["message"]
    # Without max_tokens the default is shortened to fit, and the reply stops at the context's end.
    long_text = "red circle blue square " * 100
    n_prompt = len(chat.prepare(vlm, [[chat.user(long_text)]])["input_ids"][0])
    assert 300 < n_prompt < 512 - 20
    r = post(server, {"messages": [{"role": "user", "content": long_text}], "temperature": 0,
                      "logit_bias": fixed_length_bias(vlm)})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == n_prompt and usage["total_tokens"] <= 512
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_client_leaving_a_non_streamed_request_stops_its_work(server, vlm):
    """A client sends a non-streamed request that would run to the end of the context and hangs up while it
    generates: the row is cancelled (its work stops), it does not run to its 450 tokens."""
    before = httpx.get(server.url + "/health").json()["batcher"]["cancelled"]
    payload = json.dumps({"messages": to_openai_messages(describe(7)), "temperature": 0, "max_tokens": 450,
                          "logit_bias": fixed_length_bias(vlm)}).encode()
    host, port = server.url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
        deadline = time.monotonic() + 60
        while httpx.get(server.url + "/health").json()["batcher"]["active"] == 0:  # wait until it generates
            assert time.monotonic() < deadline
            time.sleep(0.01)
    # the connection is closed: the client has left mid-generation
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stats = httpx.get(server.url + "/health").json()["batcher"]
        if stats["cancelled"] > before and stats["active"] == 0:
            break
        time.sleep(0.2)
    assert stats["cancelled"] > before and stats["cancelled_tokens"][-1] < 450, stats


# --------------------------------------------------------------------------- 4. no 500s


BAD_URLS = {
    "http://127.0.0.1:99999/x.png": "Port out of range",
    "http://127.0.0.1:abc/x.png": "Port could not be cast",
    "http://127.0.0.1:-1/x.png": "Port",
    "http://[::1/x.png": "Invalid IPv6",
    "http://[zz]/x.png": "",
    "http://127.0.0.1/a\x00b.png": "control characters",
    "http://127.0.0.1/a\r\nHost: x": "control characters",
}


@pytest.mark.parametrize("url", list(BAD_URLS))
def test_malformed_urls_are_400(server, url):
    err = error_of(post(server, {"messages": image_msg(url)}))
    assert err["code"] == "invalid_image_url" and BAD_URLS[url] in err["message"]


def test_bad_paths_and_text_are_400(server):
    allowed = server.allowed
    for url in (f"{allowed}/a\x00b.png", f"{allowed}/" + "n" * 5000 + ".png", f"file://{allowed}/missing.png"):
        r = post(server, {"messages": image_msg(url)})
        assert r.status_code == 400, (url[:80], r.text)
        assert "/" + "n" * 300 not in error_of(r)["message"]
    missing = error_of(post(server, {"messages": image_msg(f"{allowed}/missing.png")}))["message"]
    assert "not found" in missing and str(allowed.parent.parent) not in missing.replace(str(allowed), "")
    raw = b'{"messages": [{"role": "user", "content": "\\ud800 hello"}]}'
    err = error_of(post(server, content=raw, headers={"content-type": "application/json"}))
    assert err["code"] == "invalid_messages" and "surrogate" in err["message"]


def test_python_api_raises_course_errors(vlm):
    with pytest.raises(MessagesError, match="surrogate"):
        chat.generate(vlm, [chat.user("\ud800")])
    for seed in (2**64, -1, 1.5, True):
        with pytest.raises(GenerationError, match="seed"):
            chat.generate(vlm, [chat.user("hi")], seed=seed)


urls = st.sampled_from(["http://", "https://", "http://[", "http://127.0.0.1:", "file://", "/", "data:image/png;base64,",
                        ""]).flatmap(lambda prefix: st.text(max_size=40).map(lambda rest: prefix + rest))


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(url=urls, text=st.text(max_size=30))
def test_property_no_5xx_for_any_url_path_or_text(server, url, text):
    r = post(server, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                                {"type": "text", "text": text or "x"}]}],
                      "max_tokens": 2})
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        error_of(r)


# --------------------------------------------------------------------------- 6. OpenAI fields and HTTP


def test_logprobs_are_the_models(server, vlm):
    conversation = describe(2)
    r = post(server, {"messages": to_openai_messages(conversation), "temperature": 0, "max_tokens": 8,
                      "logprobs": True, "top_logprobs": 3})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    content = choice["logprobs"]["content"]
    reply = chat.generate(vlm, conversation, max_new_tokens=8)
    ids = [t for t in reply.token_ids if t not in chat.end_token_ids(vlm)]
    assert [e["token"] for e in content] == [vlm.tokenizer.decode([t]) for t in ids]
    inputs = chat.prepare(vlm, [conversation])
    with torch.no_grad():
        logits = vlm.model(**inputs).logits[0, -1]
    first = torch.log_softmax(logits.float(), -1)
    assert content[0]["logprob"] == pytest.approx(float(first[ids[0]]), abs=1e-4)
    for entry in content:
        tops = entry["top_logprobs"]
        assert len(tops) == 3 and tops[0]["token"] == entry["token"]  # greedy: the chosen token is the top one
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
    streamed = post(server, {"messages": to_openai_messages(conversation), "temperature": 0, "max_tokens": 8,
                             "logprobs": True, "stream": True})
    entries = [e for line in streamed.text.splitlines() if line.startswith("data: {")
               for c in json.loads(line[6:])["choices"] if c.get("logprobs") for e in c["logprobs"]["content"]]
    assert [e["token"] for e in entries] == [e["token"] for e in content]


def test_penalties_change_a_repetitive_reply(server, vlm):
    body = {"messages": to_openai_messages(describe(4)), "temperature": 0, "max_tokens": 40,
            "logit_bias": fixed_length_bias(vlm)}
    plain = post(server, body).json()["choices"][0]["message"]["content"]
    for field in ("frequency_penalty", "presence_penalty"):
        penalised = post(server, {**body, field: 2.0})
        assert penalised.status_code == 200, penalised.text
        text = penalised.json()["choices"][0]["message"]["content"]
        assert text != plain
        words, plain_words = text.split(), plain.split()  # a penalty makes repeats rarer: more distinct words a word
        assert len(set(words)) / len(words) > len(set(plain_words)) / len(plain_words), (field, plain, text)


def test_null_optional_fields_developer_role_and_max_completion_tokens(server, vlm):
    conversation = describe(5)
    messages = to_openai_messages(conversation)
    body = {"messages": messages, "temperature": 0, "top_p": None, "stop": None, "seed": None, "stream": None,
            "n": None, "logit_bias": None, "max_tokens": None, "max_completion_tokens": 3,
            "frequency_penalty": None, "presence_penalty": None, "logprobs": None, "response_format": {"type": "text"}}
    r = post(server, body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 3
    system = [{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]}]
    with_developer = post(server, {"messages": [{**system[0], "role": "developer"}] + messages, "temperature": 0})
    with_system = post(server, {"messages": system + messages, "temperature": 0})
    assert with_developer.status_code == 200, with_developer.text
    assert with_developer.json()["choices"][0]["message"] == with_system.json()["choices"][0]["message"]


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"n": 2}, "n"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"stream": "yes"}, "stream"),
    ({"max_tokens": True}, "max_tokens"),
    ({"temperature": "0.5"}, "temperature"),
])
def test_unsupported_or_mistyped_fields_are_named(server, extra, param):
    r = post(server, {"messages": [{"role": "user", "content": "hi"}], **extra})
    err = error_of(r)
    assert r.status_code == 400 and err["param"] == param and param in err["message"], err


def test_http_edges(server, keyed):
    big = b'{"messages": [{"role": "user", "content": "' + b"a" * 3_100_000 + b'"}]}'

    def chunked():
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    r = httpx.post(server.url + "/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"},
                   timeout=60)
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"
    r = httpx.post(server.url + "/v1/chat/completions", content=b'{"messages": []}', timeout=60)
    assert r.status_code == 400 and "Content-Type" in error_of(r)["message"]
    # Auth before parsing: a wrong key with broken JSON is a 401, not a 400.
    r = post(keyed, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
    health = httpx.get(keyed.url + "/health").json()
    assert health["status"] == "ok" and "batcher" not in health
    with_key = httpx.get(keyed.url + "/health", headers={"authorization": "Bearer sesame"}).json()
    assert with_key["batcher"]["max_batch_size"] == 8


def test_slow_image_host_gets_a_bounded_answer(vlm):
    """A host that trickles its status line a byte every 0.3 s: the request gets a 400 at the deadline."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n":
                    if stop.wait(0.3):
                        break
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        break

    threading.Thread(target=serve, daemon=True).start()
    settings = ServerSettings(allow_private_urls=True, url_timeout=1.0)
    try:
        with start_in_background(settings, vlm=vlm, network=LOOPBACK_ONLY) as srv:
            err = error_of(post(srv, {"messages": image_msg(f"http://127.0.0.1:{listener.getsockname()[1]}/x.png")}))
            assert err["code"] == "timeout" and "timed out after 1 s" in err["message"]
    finally:
        stop.set()
        listener.close()


def test_a_cancelled_prefill_stops_before_the_language_model(vlm):
    """The client leaves while its prompt is being read: the decoder layers' check ends the forward pass
    before any of them runs, and no token is ever computed (lm_head never runs)."""
    from vlm_course.serve.batching import Batcher, Job

    events, done = [], threading.Event()

    def emit(event):
        events.append(event)
        if event[0] in ("done", "error"):
            done.set()

    job = Job(describe(1), emit, max_new_tokens=50, stream=False)
    calls = {"decoder": 0, "lm_head": 0}
    hooks = [vlm.model.model.vision_model.register_forward_hook(lambda *a: job.cancel.set()),  # mid-prefill
             vlm.model.model.text_model.layers[0].register_forward_hook(lambda *a: calls.__setitem__("decoder", 1)),
             vlm.model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("lm_head", 1))]
    batcher = Batcher(vlm, max_batch_size=1, max_wait_ms=0)
    try:
        batcher.submit(job)
        assert done.wait(60)
    finally:
        batcher.close()
        for hook in hooks:
            hook.remove()
    kind, result = events[-1][:2]
    assert kind == "done" and result.finish_reason == "cancelled" and result.usage.completion_tokens == 0
    assert calls == {"decoder": 0, "lm_head": 0}
    assert batcher.stats["cancelled"] == 1


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(text=st.text(max_size=60), image_source=st.text(max_size=60).filter(
    lambda t: not t.strip().lower().startswith(("http://", "https://"))))  # the library may fetch those
def test_property_python_api_raises_only_course_errors(vlm, text, image_source):
    from vlm_course.errors import VLMCourseError
    from vlm_course.images import load_image

    try:
        chat.prepare(vlm, [[chat.user(text or "x")]])
    except VLMCourseError:
        pass
    try:
        load_image(image_source)
    except VLMCourseError:
        pass


def test_the_prefill_check_never_stops_another_threads_forward(vlm):
    """The batcher's hooks live on the shared model while its generate runs: a chat.generate in another thread
    at that moment (a notebook beside a background server) must not be stopped by them."""
    from vlm_course.serve.batching import Batcher, Job

    conversation = describe(2)
    want = chat.generate(vlm, conversation, max_new_tokens=8).text
    started, release, done = threading.Event(), threading.Event(), threading.Event()
    job = Job(conversation, lambda e: done.set() if e[0] in ("done", "error") else None, max_new_tokens=5, stream=False)

    def pause_in_the_workers_prefill(module, args):
        if threading.current_thread().name == "vlm-course-batcher" and not started.is_set():
            job.cancel.set()  # every row of the worker's batch is now cancelled, with its hooks in place
            started.set()
            release.wait(60)

    hook = vlm.model.model.vision_model.register_forward_pre_hook(pause_in_the_workers_prefill)
    batcher = Batcher(vlm, max_batch_size=1, max_wait_ms=0)
    try:
        batcher.submit(job)
        assert started.wait(60)
        assert chat.generate(vlm, conversation, max_new_tokens=8).text == want  # runs through the worker's hooks
    finally:
        release.set()
        hook.remove()
        assert done.wait(60)
        batcher.close()
