"""Measure issue 16's findings against a real `vlm-course serve` subprocess on 127.0.0.1.

    python -m vlm_course.serve.probe                       # the default server
    python -m vlm_course.serve.probe -- --max-image-pixels 40000000 --max-request-pixels 400000000

Prints, for the server process: its peak RSS while 4 clients at once each send 8 PNGs of 6000x6000
(35 KB each, 36 M pixels once decoded), the status codes they got, the time to the answer for a 1 MB
prompt, and the load test's p50 / p95 and failures (200 requests, 16 clients). Arguments after `--` go
to `vlm-course serve`. Figures, not assertions: the tests assert behaviour.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import socket
import subprocess
import sys
import threading
import time

ATTACK_CLIENTS, ATTACK_IMAGES, ATTACK_SIDE = 4, 8, 6000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bomb_uri(side: int = ATTACK_SIDE) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (side, side), 0).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class PeakRSS:
    """Samples a process's resident memory every few milliseconds in a thread."""

    def __init__(self, pid: int, every: float = 0.01):
        import psutil

        self.process, self.every, self.peak, self._stop = psutil.Process(pid), every, 0, threading.Event()
        self.peak = self.now()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        return self.process.memory_info().rss

    def _run(self):
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.now())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main(argv=None) -> int:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-load", action="store_true", help="skip the 200-request load test")
    parser.add_argument("serve_args", nargs="*", help="arguments for vlm-course serve (after --)")
    args = parser.parse_args(argv)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([sys.executable, "-m", "vlm_course.cli", "serve", "--port", str(port), "--log-level",
                             "warning", *args.serve_args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).json().get("status") == "ok":
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.3)
        from ..models import load_vlm

        vlm = load_vlm(device="cpu")
        uri = bomb_uri()
        body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}] * ATTACK_IMAGES
                              + [{"type": "text", "text": "What do we see in this image?"}]}], "max_tokens": 8,
                "temperature": 0}
        statuses: list = []
        with PeakRSS(proc.pid) as rss:
            idle = rss.now()

            def attack():
                r = httpx.post(url + "/v1/chat/completions", json=body, timeout=300)
                statuses.append((r.status_code, r.json().get("error", {}).get("code") if r.status_code != 200 else "ok"))

            threads = [threading.Thread(target=attack) for _ in range(ATTACK_CLIENTS)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            attack_s = time.perf_counter() - start
            time.sleep(0.5)
            after = rss.now()
        print(f"image attack: {ATTACK_CLIENTS} clients x {ATTACK_IMAGES} PNGs of {ATTACK_SIDE}x{ATTACK_SIDE} "
              f"({len(uri) * 3 // 4 // 1000} KB each): answers {sorted(statuses)} in {attack_s:.2f} s; server RSS "
              f"idle {idle / 1e9:.2f} GB, peak {rss.peak / 1e9:.2f} GB, after {after / 1e9:.2f} GB")

        prompt = "tell me about red circles. " * 40_000
        start = time.perf_counter()
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}]}, timeout=300)
        print(f"1 MB prompt ({len(prompt.encode()):,} bytes): HTTP {r.status_code} "
              f"{r.json().get('error', {}).get('code')} in {time.perf_counter() - start:.3f} s")

        if not args.skip_load:
            from ..chat import user
            from ..shapes import random_scene
            from .loadtest import load_test
            from .openai_format import to_openai_messages

            bodies = [{"model": vlm.name, "temperature": 0, "max_tokens": 32,
                       "messages": to_openai_messages([user(random_scene(1000 + i).draw(), "What do we see in this image?")])}
                      for i in range(200)]
            result = load_test(url, bodies, concurrency=16, separate_process=True)
            print("load test:", result.summary())
    finally:
        proc.terminate()
        proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
