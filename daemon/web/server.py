"""Serve the web application with uvicorn on a background thread."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from daemon.web.app import create_app
from daemon.web.context import WebContext

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class WebServer:
    """The node's HTTP server: pages, API, DICOMweb, ``/healthz``, ``/metrics``.

    The socket is bound in the constructor, so :attr:`port` is known at once
    (port 0 picks a free one). Same constructor as the former
    ``daemon.health_http.HealthServer``, which it replaces.

    Parameters
    ----------
    queue
        The job queue.
    host, port
        Where to listen.
    extra_checks
        Node checks merged into ``/healthz`` (see :class:`WebContext`).
    context
        Everything else the pages need; built from ``queue`` and the embedded
        default config when omitted.
    """

    def __init__(
        self,
        queue: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        extra_checks: Any = None,
        context: WebContext | None = None,
    ) -> None:
        if context is None:
            context = WebContext.for_queue(queue)
        if extra_checks is not None:
            context.extra_checks = extra_checks
        self.context = context
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        self._socket = sock
        http = context.config().http
        config = uvicorn.Config(
            create_app(context),
            log_level="warning",
            lifespan="off",
            access_log=False,
            ssl_certfile=str(http.tls_certificate) if http.tls_certificate else None,
            ssl_keyfile=str(http.tls_private_key) if http.tls_private_key else None,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self._socket.getsockname()[1])

    def start(self) -> WebServer:
        """Serve on a daemon thread; returns once it accepts requests."""
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="contourd-http",
            daemon=True,
        )
        self._thread.start()
        deadline_s = time.monotonic() + START_TIMEOUT_S
        poll = threading.Event()
        while not self._server.started and time.monotonic() < deadline_s:
            poll.wait(0.02)
        if not self._server.started:
            log.warning("http server not started after %.0f s", START_TIMEOUT_S)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_S)
        self._socket.close()
