"""Run the console (uvicorn) in a thread of the broker process, or on its own."""

from __future__ import annotations

import threading
import time

import uvicorn

from broker.application import UseCases
from broker.runtime import Runtime
from broker.web.app import create_app


class WebServer:
    """Start/stop uvicorn serving the console; ``port`` is the bound port."""

    def __init__(self, runtime: Runtime, use_cases: UseCases) -> None:
        settings = runtime.settings
        config = uvicorn.Config(create_app(runtime, use_cases), host=settings.http_host,
                                port=settings.http_port, log_level="warning", lifespan="off",
                                access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="mwl-web", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the web console did not start (is the port free?)")
            time.sleep(0.02)

    @property
    def port(self) -> int:
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
