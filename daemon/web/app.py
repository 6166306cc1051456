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

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.middleware.sessions import SessionMiddleware

from contourd import __version__
from contourd.errors import ContourdError, NotLoggedInError, WebAuthError
from daemon.health_http import QueueCollector
from daemon.web.api import router as api_router
from daemon.web.context import WebContext, session_secret
from daemon.web.pages import router as page_router
from daemon.web.pages import templates
from model_store.registry import ModelRegistry


def _wants_json(request: Request) -> bool:
    path = request.url.path
    return path.startswith("/api") or path.startswith("/dicomweb")


def create_app(context: WebContext) -> FastAPI:
    """The application; ``context`` is kept in ``app.state.context``."""
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
