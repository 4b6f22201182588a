"""Run the app: in the foreground (`vlm-course serve`) or in a background thread (notebooks, tests).

    server = start_in_background(ServerSettings(max_batch_size=8))   # 127.0.0.1, a free port
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    ...
    server.stop()
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Optional

from ..errors import missing_extra
from .app import ServerSettings, create_app


def _uvicorn():
    try:
        import uvicorn
    except ImportError:
        raise missing_extra("uvicorn", "serve") from None
    return uvicorn


def _server(app, grace: float, **config):
    """A uvicorn server whose first SIGTERM / SIGINT (or stop()) drains the app before uvicorn stops:
    in-flight requests get `grace` seconds, then the app ends them with OpenAI-shaped errors itself, so
    uvicorn's own deadline (a little later) never has to cut a connection with a plain-text 500."""
    uvicorn = _uvicorn()

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            drain = getattr(getattr(app, "state", None), "drain", None)
            if drain is not None and not self.should_exit:
                drain(grace)
            super().handle_exit(sig, frame)

    return DrainingServer(uvicorn.Config(app, lifespan="on", timeout_graceful_shutdown=grace + 3, **config))


class BackgroundServer:
    """A uvicorn server in a daemon thread. `.url` is e.g. 'http://127.0.0.1:53127'; `.stop()` ends it."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", grace: float = 5.0):
        self.app = app
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))  # port 0: the system picks a free one
        self.host, self.port = host, self._sock.getsockname()[1]
        self.server = _server(app, grace, log_level=log_level)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True,
                                        name=f"vlm-course-server-{self.port}")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 120) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("The server thread exited during startup; see the log above.")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"The server did not start within {timeout:g} s.")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 30) -> None:
        drain = getattr(self.app.state, "drain", None)
        if drain is not None and not self.server.should_exit:
            drain()  # as on SIGTERM: in-flight requests get the grace period, then an error
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_in_background(settings: Optional[ServerSettings] = None, vlm=None, host: str = "127.0.0.1",
                        port: int = 0, log_level: str = "warning", network=None) -> BackgroundServer:
    """Start the server in this process and return once it answers (the model loads first if `vlm` is None)."""
    settings = settings or ServerSettings()
    app = create_app(settings, vlm=vlm, network=network)
    return BackgroundServer(app, host, port, log_level, grace=settings.shutdown_grace_s).start()


def serve_forever(settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run in the foreground until Ctrl-C or SIGTERM (both drain: see _server)."""
    _server(create_app(settings), settings.shutdown_grace_s, host=host, port=port, log_level=log_level).run()
