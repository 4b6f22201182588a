"""Graceful shutdown of a real `vlm-course serve` (uvicorn in a subprocess on 127.0.0.1), on SIGTERM.

The finding: SIGTERM during long generations answered 6 in-flight requests with plain-text 500s and cut 2
streams without an error event or [DONE]. Now: the listener closes, in-flight requests get the grace
period, and whatever still runs after it ends with an OpenAI-shaped 503 (streams: an error event, then
[DONE]).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from vlm_course.serve.loadtest import fixed_length_bias
from vlm_course.serve.openai_format import to_openai_messages
from vlm_course.shapes import random_scene
from vlm_course import chat

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(grace: float):
    port = free_port()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "vlm_course.cli", "serve", "--port", str(port), "--max-batch-size", "8",
                             "--max-wait-ms", "1000", "--shutdown-grace-s", str(grace), "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).json()["status"] == "ok":
                return proc, url
        except httpx.HTTPError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("the server did not start")


def body(vlm, seed, max_tokens, stream=False):
    return {"messages": to_openai_messages([chat.user(random_scene(seed).draw(), "What do we see in this image?")]),
            "temperature": 0, "max_tokens": max_tokens, "logit_bias": fixed_length_bias(vlm), "stream": stream}


def test_sigterm_ends_long_requests_with_openai_errors_and_streams_with_done(vlm):
    proc, url = start(grace=0)  # the 5 requests below share one generate (batch 8, 1 s to gather)
    results: dict = {}
    streaming = threading.Event()

    def plain(i):
        r = httpx.post(url + "/v1/chat/completions", json=body(vlm, i, 480), timeout=120)
        results[f"plain{i}"] = (r.status_code, r.headers.get("content-type", ""), r.text)

    def streamed(i):
        lines = []
        with httpx.stream("POST", url + "/v1/chat/completions", json=body(vlm, i, 480, stream=True), timeout=120) as r:
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                if len(lines) >= 3:
                    streaming.set()
        results[f"stream{i}"] = lines

    threads = [threading.Thread(target=plain, args=(i,)) for i in range(3)]
    threads += [threading.Thread(target=streamed, args=(i,)) for i in range(3, 5)]
    try:
        for t in threads:
            t.start()
        assert streaming.wait(60), "no stream started"
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    assert proc.returncode in (0, -signal.SIGTERM), log
    assert "Traceback" not in log, log
    for i in range(3):
        status, ctype, text = results[f"plain{i}"]
        assert status == 503 and ctype.startswith("application/json"), (status, text[:300])
        assert json.loads(text)["error"]["code"] == "server_shutting_down"
    for i in range(3, 5):
        lines = results[f"stream{i}"]
        assert lines[-1] == "data: [DONE]", lines[-3:]
        assert json.loads(lines[-2][6:])["error"]["code"] == "server_shutting_down", lines[-3:]


def test_sigterm_lets_requests_finish_within_the_grace_period(vlm):
    proc, url = start(grace=60)
    result: dict = {}
    streaming = threading.Event()

    def streamed():
        lines = []
        with httpx.stream("POST", url + "/v1/chat/completions", json=body(vlm, 1, 60, stream=True), timeout=120) as r:
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    streaming.set()
        result["lines"] = lines

    thread = threading.Thread(target=streamed)
    try:
        thread.start()
        assert streaming.wait(60)
        proc.send_signal(signal.SIGTERM)
        thread.join(120)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = result["lines"]
    assert lines[-1] == "data: [DONE]"
    finish = [json.loads(line[6:])["choices"][0]["finish_reason"] for line in lines[:-1]
              if json.loads(line[6:]).get("choices")]
    assert finish[-1] == "length"  # the whole reply: 60 tokens, none cut
    assert proc.returncode in (0, -signal.SIGTERM)
