"""The same app as a Ray Serve deployment on a local Ray instance (CPU, one replica), queried over HTTP
with the official `openai` client. Ray starts once for the module (it takes seconds and ~1.3 GB)."""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from _need import need  # skips outside CI, fails in CI

need("ray.serve")
openai = need("openai")

from vlm_course import chat  # noqa: E402
from vlm_course.serve.openai_format import to_openai_messages  # noqa: E402
from vlm_course.serve.ray_app import RayServeConfig, build_app, start_ray, stop_ray  # noqa: E402
from vlm_course.shapes import random_scene  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SEEDS = [1, 2, *range(30, 36)]


@pytest.fixture(scope="module")
def expected(vlm):
    """chat.generate's answers, computed before Ray starts (its processes would slow them down)."""
    return {seed: chat.generate(vlm, describe(seed), max_new_tokens=32) for seed in SEEDS}


@pytest.fixture(scope="module")
def ray_url(expected):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    config = RayServeConfig(max_batch_size=4, max_wait_ms=30, num_replicas=1, ray_actor_options={"num_cpus": 1})
    url = start_ray(config, host="127.0.0.1", port=free_port(), num_cpus=2)
    yield url
    stop_ray()


def describe(seed):
    return [chat.user(random_scene(seed).draw(), "What do we see in this image?")]


def test_config_like_aana():
    config = RayServeConfig(model_id="some/model", dtype="bfloat16", attn="sdpa", quant="bnb-4bit", max_batch_size=16,
                            num_replicas=2, ray_actor_options={"num_gpus": 1})
    settings = config.server_settings()
    assert (settings.model, settings.dtype, settings.attn, settings.quant, settings.max_batch_size) == \
        ("some/model", "bfloat16", "sdpa", "bnb-4bit", 16)
    from ray import serve

    app = build_app(config)  # building the application loads nothing
    assert isinstance(app, serve.Application)
    deployment = app._bound_deployment  # what serve.run would deploy: the config's replicas and resources
    assert (deployment.name, deployment.num_replicas, deployment.max_ongoing_requests) == ("VLMCourseServer", 2, 32)
    assert deployment.ray_actor_options["num_gpus"] == 1
    with pytest.raises(ValueError):
        RayServeConfig(max_batch_size=0)


def test_openai_client_against_ray_serve(ray_url, expected):
    client = openai.OpenAI(base_url=ray_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    name = client.models.list().data[0].id
    reply = client.chat.completions.create(model=name, messages=to_openai_messages(describe(1)), temperature=0,
                                           max_tokens=32)
    want = expected[1]
    assert reply.choices[0].message.content == want.text
    assert reply.usage.prompt_tokens == want.usage.prompt_tokens

    stream = client.chat.completions.create(model=name, messages=to_openai_messages(describe(2)), temperature=0,
                                            max_tokens=32, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        expected[2].text


def test_ray_serve_batches_concurrent_requests(ray_url, expected):
    def one(seed):
        c = openai.OpenAI(base_url=ray_url + "/v1", api_key="unused", max_retries=0, timeout=120)
        return c.chat.completions.create(model="default", messages=to_openai_messages(describe(seed)), temperature=0,
                                         max_tokens=32).choices[0].message.content

    seeds = list(range(30, 36))
    with ThreadPoolExecutor(len(seeds)) as pool:
        got = list(pool.map(one, seeds))
    assert got == [expected[s].text for s in seeds]
    import httpx

    health = httpx.get(ray_url + "/health", timeout=30).json()
    stats = health["batcher"]
    assert health["status"] == "ok" and stats["rows"] >= len(seeds) + 2
    # Batched: while the replica works on one batch the other requests queue, so some batch held several rows.
    assert stats["largest_batch"] >= 2 and stats["batches"] < stats["rows"], stats


def test_ray_noise_is_dropped_at_its_source():
    import logging

    from vlm_course.serve import ray_app

    ray_app._serve()
    assert logging.getLogger("ray.serve").getEffectiveLevel() == logging.WARNING  # Serve's INFO steps stay quiet
    ray_app._drop_token_notice()
    ray_app._drop_token_notice()  # once is enough: no second filter
    logger = logging.getLogger(ray_app.TOKEN_LOGGER)
    assert sum(isinstance(f, ray_app._DropTokenNotice) for f in logger.filters) == 1
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger.addHandler(handler)
    try:
        logger.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
        logger.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage()[:36] for r in seen] == ["Token authentication is disabled for"]  # a real warning stays
