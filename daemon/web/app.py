"""The ASGI application: ``/healthz``, ``/metrics``, login, pages, ``/api``, ``/dicomweb``.

:func:`create_app` builds one FastAPI application from a :class:`WebContext`.
``/healthz`` and ``/metrics`` answer without login, exactly as before.
Everything else needs a user (see :mod:`daemon.web.users`): a session cookie
from the login page, HTTP Basic credentials (scripts, dicomweb-client), or,
with ``http.auth: proxy_header``, the name a reverse proxy puts in
``http.proxy_user_header``. An unknown user gets 401 (pages: the login page);
a known one without the role for an action gets 403 with the role it needs.
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

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import Collector
from starlette.middleware.sessions import SessionMiddleware

from contourd import __version__
from contourd.data_folder import DataFolder
from contourd.errors import ContourdError, NotLoggedInError, WebAuthError
from daemon.config import ContourdConfig, default_config
from daemon.health_http import QueueCollector, collect_status
from daemon.job_queue import SqliteJobQueue
from daemon.web.slices import JobImageCache
from daemon.web.stow import StowReceiver
from daemon.web.users import User, UserStore
from model_store.registry import ModelRegistry

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


def _wants_json(request: Request) -> bool:
    path = request.url.path
    return path.startswith("/api") or path.startswith("/dicomweb")


def create_app(context: WebContext) -> FastAPI:
    """The application; ``context`` is kept in ``app.state.context``."""
    from daemon.web.api import router as api_router
    from daemon.web.pages import router as page_router
    from daemon.web.pages import templates

    app = FastAPI(
        title="contourd",
        version=__version__,
        description=(
            "Auto-contouring DICOM node: jobs, models, routing rules, DICOMweb STOW-RS. "
            "Log in with HTTP Basic (a `contourd users` user) or a session cookie. "
            "No patient name, ID or birth date is returned unless "
            "`http.show_patient_identifiers` is set."
        ),
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.context = context
    ModelRegistry(context.data_dir).close()  # registers the built-in models once
    http = context.config().http
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(context.data_dir),
        max_age=http.session_max_age_s,
        same_site="strict",
        https_only=http.tls_certificate is not None,
        session_cookie="contourd_session",
    )
    registry = CollectorRegistry(auto_describe=True)
    registry.register(QueueCollector(context.queue))
    for collector in context.collectors:
        registry.register(collector)

    @app.get("/healthz", tags=["monitoring"], summary="Node health (200 ok, 503 unhealthy)")
    def healthz() -> JSONResponse:
        code, body = context.health()
        return JSONResponse(body, status_code=code)

    @app.get("/metrics", tags=["monitoring"], summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(NotLoggedInError)
    def not_logged_in(request: Request, err: NotLoggedInError) -> Response:
        if _wants_json(request):
            return JSONResponse(
                {"detail": str(err)},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="contourd"'},
            )
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    @app.exception_handler(WebAuthError)
    def forbidden(request: Request, err: WebAuthError) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": str(err)}, status_code=403)
        return templates.TemplateResponse(
            request, "error.html", {"message": str(err), "user": None}, status_code=403
        )

    @app.exception_handler(ContourdError)
    def refused(request: Request, err: ContourdError) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": str(err)}, status_code=409)
        return templates.TemplateResponse(
            request, "error.html", {"message": str(err), "user": None}, status_code=409
        )

    app.include_router(api_router)
    app.include_router(page_router)
    return app
