"""Measure a running server with concurrent clients: latency percentiles and throughput.

    result = load_test(server.url, bodies, concurrency=16)
    print(result.summary())

Each client is a thread with its own `openai.OpenAI` client, sending chat-completion bodies; only
this machine's servers should be targeted (the course's tests use 127.0.0.1). With
`separate_process=True` the clients run in a child Python process, so that their own work does not
compete for this process's GIL with a server running here in a background thread.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from ..errors import missing_extra


@dataclass
class LoadResult:
    concurrency: int
    seconds: float  # wall time for all requests
    latencies: list[float]  # seconds per successful request
    texts: list[Optional[str]]  # reply per request, in the order of `bodies` (None: failed)
    completion_tokens: int
    failures: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.texts)

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]

    def summary(self) -> str:
        return (f"{self.requests} requests, {self.concurrency} concurrent clients, {len(self.failures)} failures: "
                f"{self.throughput:.1f} requests/s, {self.tokens_per_second:.0f} completion tokens/s, "
                f"latency p50 {self.percentile(50) * 1000:.0f} ms, p95 {self.percentile(95) * 1000:.0f} ms")


def fixed_length_bias(vlm) -> dict[str, float]:
    """A logit_bias that bans the end-of-turn tokens, so every reply runs to max_tokens (vLLM's ignore_eos):
    benchmarks then compare servers doing exactly the same work."""
    from ..chat import end_token_ids

    return {str(t): -100 for t in sorted(end_token_ids(vlm))}


def load_test(base_url: str, bodies: Sequence[dict], concurrency: int = 16, api_key: str = "none",
              timeout: float = 120, progress: bool = False, separate_process: bool = False) -> LoadResult:
    """Send every body in `bodies` to POST {base_url}/v1/chat/completions from `concurrency` threads."""
    if separate_process:
        return _in_child(base_url, bodies, concurrency, api_key, timeout)
    try:
        import openai
    except ImportError:
        raise missing_extra("openai", "dev") from None
    # One client per thread, built before the clock starts (building one costs CPU time).
    clients = [openai.OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key=api_key, timeout=timeout, max_retries=0)
               for _ in range(concurrency)]
    free = list(clients)
    local = threading.local()
    lock = threading.Lock()
    texts: list[Optional[str]] = [None] * len(bodies)
    latencies: list[float] = []
    failures: list[str] = []
    tokens = [0]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(bodies), desc=f"{concurrency} clients")

    def one(i: int) -> None:
        if not hasattr(local, "client"):
            with lock:
                local.client = free.pop()
        start = time.perf_counter()
        try:
            reply = local.client.chat.completions.create(**bodies[i])
        except Exception as e:  # noqa: BLE001 - a failure is a result here, counted and reported
            with lock:
                failures.append(f"request {i}: {type(e).__name__}: {e}")
        else:
            with lock:
                latencies.append(time.perf_counter() - start)
                texts[i] = reply.choices[0].message.content
                tokens[0] += reply.usage.completion_tokens if reply.usage else 0
        if bar is not None:
            bar.update(1)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(len(bodies))))
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    for c in clients:
        c.close()
    return LoadResult(concurrency, seconds, latencies, texts, tokens[0], failures)


def _in_child(base_url, bodies, concurrency, api_key, timeout) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(list(bodies), f)
        f.flush()
        out = subprocess.run([sys.executable, "-m", "vlm_course.serve.loadtest", base_url, f.name, str(concurrency),
                              api_key, str(timeout)], capture_output=True, text=True, timeout=timeout * len(bodies) + 60)
    if out.returncode != 0:
        raise RuntimeError(f"The load-test process failed:\n{out.stderr[-2000:]}")
    return LoadResult(**json.loads(out.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":  # python -m vlm_course.serve.loadtest URL BODIES.json CONCURRENCY API_KEY TIMEOUT
    url, path, concurrency, key, timeout = sys.argv[1:6]
    with open(path) as fh:
        result = load_test(url, json.load(fh), int(concurrency), key, float(timeout))
    print(json.dumps(asdict(result)))
