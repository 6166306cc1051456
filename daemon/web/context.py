"""What the web application reads and acts on, and who is asking.

:class:`WebContext` holds the node's queue, config provider, health checks,
STOW-RS receiver and Prometheus collectors; :func:`current_user` finds the
request's user (session cookie, HTTP Basic, or a reverse proxy's header);
:func:`session_secret` is the cookie signing key of a data folder. The
application (:mod:`daemon.web.app`) and its routers (:mod:`daemon.web.api`,
:mod:`daemon.web.pages`) import these from here, so the routers need nothing
of the application module.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from prometheus_client.registry import Collector

from contourd.data_folder import DataFolder
from contourd.errors import NotLoggedInError, WebAuthError
from daemon.config import ContourdConfig, default_config
from daemon.health_http import collect_status
from daemon.job_queue import SqliteJobQueue
from daemon.web.slices import JobImageCache
from daemon.web.stow import StowReceiver
from daemon.web.users import User, UserStore

HealthCheck = Callable[[], dict[str, Any]]


@dataclass
class WebContext:
    """What the web application reads and acts on.

    Parameters
    ----------
    queue
        The job queue.
    config
        Returns the config in force (a reloaded config applies to the next request).
    extra_checks
        Returns ``{"healthy": bool, "problems": [str, ...], ...}`` from the
        running node (config, disk floor, workers, dispatch; see
        :mod:`daemon.node_health`); merged into ``/healthz``, whose
        ``problems`` list says why it answers 503.
    stow
        Where STOW-RS stores; ``None`` (no receive node in this process): 503.
    collectors
        Further Prometheus collectors served on ``/metrics`` (e.g. the
        feedback medians, :class:`daemon.feedback_metrics.FeedbackCollector`).
    """

    queue: SqliteJobQueue
    config: Callable[[], ContourdConfig]
    extra_checks: HealthCheck | None = None
    stow: StowReceiver | None = None
    collectors: list[Collector] = field(default_factory=list)
    images: JobImageCache = field(default_factory=JobImageCache)
    _users: UserStore | None = field(default=None, init=False, repr=False)

    @classmethod
    def for_queue(cls, queue: SqliteJobQueue) -> WebContext:
        """A context on ``queue`` with the embedded default config (tests, tools)."""
        config = default_config()
        config.node.data_dir = Path(queue.data_dir)
        return cls(queue=queue, config=lambda: config)

    @property
    def data_dir(self) -> Path:
        """The data folder."""
        return Path(self.queue.data_dir)

    @property
    def users(self) -> UserStore:
        """The web users, in the queue's database (one store, opened at first use)."""
        if self._users is None:
            self._users = UserStore(self.queue.database)
        return self._users

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for ``/healthz``."""
        status = collect_status(self.queue)
        status.pop("node", None)
        healthy = True
        if self.extra_checks is not None:
            extra = self.extra_checks()
            healthy = bool(extra.get("healthy", True))
            status["checks"] = extra
            status["problems"] = list(extra.get("problems", []))
        status["status"] = "ok" if healthy else "unhealthy"
        return (200 if healthy else 503), status


def session_secret(data_dir: Path) -> str:
    """The cookie signing key, made once per data folder (file mode 0600)."""
    path = DataFolder(data_dir).session_key
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        name, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return name, password


def current_user(request: Request) -> User:
    """The request's user; raises :class:`NotLoggedInError` when there is none."""
    ctx: WebContext = request.app.state.context
    http = ctx.config().http
    users = ctx.users
    if http.auth == "proxy_header":
        name = request.headers.get(http.proxy_user_header, "").strip()
        user = users.get(name) if name else None
        if user is None:
            raise NotLoggedInError(
                f"the proxy named no known user in {http.proxy_user_header}"
                + (f" ({name!r} is not in `contourd users list`)" if name else "")
            )
        return user
    session_name = request.session.get("user")
    if session_name:
        user = users.get(str(session_name))
        if user is not None:
            return user
        request.session.clear()
    credentials = _basic_credentials(request)
    if credentials is not None:
        try:
            return users.authenticate(*credentials)
        except WebAuthError as err:
            raise NotLoggedInError(str(err)) from err
    raise NotLoggedInError("log in first")
