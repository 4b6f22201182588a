"""Property-based fuzzing of POST /v1/chat/completions: no input makes the server answer 5xx.

Hypothesis builds request bodies from near-valid to nonsense (wrong types, bad roles, broken
images, out-of-range numbers, NaN, raw bytes) and sends them to a real server on 127.0.0.1. Every
answer must be 2xx, or a 4xx with an OpenAI-shaped error body. Image URLs only ever point at
loopback or private addresses, which the default server refuses without connecting.
"""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest

from _loopback import LOOPBACK_ONLY
from _need import need  # skips outside CI, fails in CI

need("fastapi")
hypothesis = need("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vlm_course.serve.app import ServerSettings  # noqa: E402
from vlm_course.serve.openai_format import image_part  # noqa: E402
from vlm_course.serve.server import start_in_background  # noqa: E402
from vlm_course.shapes import random_scene  # noqa: E402

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SEEN: Counter = Counter()

VALID_IMAGE = image_part(random_scene(0).draw(size=64))["image_url"]["url"]

odd_floats = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -0.0])
scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=8)
image_urls = st.sampled_from([
    VALID_IMAGE, VALID_IMAGE[:60], "data:image/png;base64,", "data:image/png;base64,AAAA", "data:,hello",
    "data:text/plain;base64,aGVsbG8=", "http://127.0.0.1:9/x.png", "http://[::1]/x.png", "https://10.0.0.1/a.png",
    "http://169.254.169.254/latest/meta-data", "http://localhost/x.png", "file:///etc/passwd", "/etc/passwd",
    "~/.ssh/id_rsa", "../../etc/passwd", "ftp://127.0.0.1/x", "gopher://x", "", " ", "http://", "http://:80/",
]) | st.text(max_size=30)
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=40)}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries(
        {"url": image_urls}, optional={"detail": st.sampled_from(["auto", "low", "high", "ultra"]) | json_values})}),
    st.fixed_dictionaries({"type": st.sampled_from(["image", "input_audio", "text", "image_url"])},
                          optional={"text": json_values, "image_url": json_values, "image": json_values}),
    json_values,
)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "developer", ""]) | json_values,
     "content": st.text(max_size=40) | st.lists(parts, max_size=3) | json_values},
    optional={"name": json_values}), max_size=3)
random_bodies = st.fixed_dictionaries(
    {"messages": messages | json_values},
    optional={
        "model": st.sampled_from([None, "", "default", "gpt-4o"]) | json_values,
        "max_tokens": st.integers(-3, 6) | st.sampled_from([4097, 10**9, -(10**9)]) | json_values,
        "max_completion_tokens": st.integers(-1, 4) | json_values,
        "temperature": st.floats(-1, 3) | odd_floats | json_values,
        "top_p": st.floats(-0.5, 1.5) | odd_floats | json_values,
        "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=6) | json_values,
        "seed": st.integers(-2**70, 2**70) | json_values,
        "stream": st.booleans() | json_values,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | json_values}) | json_values,
        "n": st.integers(-1, 3) | json_values,
        "logit_bias": st.dictionaries(st.text("0123456789x-", max_size=7), st.floats(-300, 300) | odd_floats | json_values,
                                      max_size=3) | json_values,
    })

# Valid bodies, and valid bodies with one field replaced by anything: the fuzzer's way past the schema.
some_text = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "Zs"]), min_size=1, max_size=30).filter(str.strip)
valid_content = st.tuples(st.integers(0, 2), some_text).map(
    lambda t: [{"type": "image_url", "image_url": {"url": VALID_IMAGE}}] * t[0] + [{"type": "text", "text": t[1]}])
valid_bodies = st.fixed_dictionaries(
    {"messages": st.builds(lambda c: [{"role": "user", "content": c}], valid_content | some_text)},
    optional={"max_tokens": st.integers(1, 6), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
              "stop": st.lists(some_text, max_size=2), "seed": st.integers(0, 2**32), "stream": st.booleans(),
              "logit_bias": st.dictionaries(st.integers(0, 300).map(str), st.floats(-100, 100), max_size=3)})
FIELDS = ["messages", "model", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options", "n",
          "logit_bias"]
mutated_bodies = st.tuples(valid_bodies, st.sampled_from(FIELDS), json_values).map(lambda t: {**t[0], t[1]: t[2]})
bodies = valid_bodies | mutated_bodies | random_bodies


@pytest.fixture(scope="module")
def server(vlm):
    # Default policy (no private URLs, no local paths); tiny replies keep each valid case fast. The fetcher may
    # reach loopback only and resolves no names: no fuzzed URL can lead anywhere else.
    with start_in_background(ServerSettings(default_max_tokens=6, max_batch_size=4), vlm=vlm,
                             network=LOOPBACK_ONLY) as srv:
        yield srv
    print(f"\nfuzz cases sent: {dict(SEEN)}")


def check(response: httpx.Response, streamed: bool = False) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    SEEN[f"{response.status_code // 100}xx"] += 1
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"] and error["type"] and error["code"], error
    elif streamed:
        assert response.text.rstrip().endswith("data: [DONE]"), response.text[-300:]
    else:
        assert response.json()["object"] == "chat.completion"


def test_fuzz_request_bodies(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        @FUZZ
        @given(bodies)
        def run(body):
            content = json.dumps(body).encode()  # NaN stays NaN: Python's json writes it, the server must cope
            r = http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
            check(r, streamed=r.headers.get("content-type", "").startswith("text/event-stream"))

        run()
    assert SEEN["2xx"] > 0 and SEEN["4xx"] > 0  # the fuzzer reached both sides


def test_fuzz_raw_bodies(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
               st.sampled_from(["application/json", "text/plain", "", "application/x-www-form-urlencoded"]))
        def run(raw, content_type):
            r = http.post("/v1/chat/completions", content=raw, headers={"content-type": content_type} if content_type else {})
            check(r)

        run()
