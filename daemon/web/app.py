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

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
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

#: Where the Swagger UI page's script, style sheet and icon are served.
DOCS_ASSETS = "/api/docs-assets"


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
        docs_url=None,  # served below from the fastapi-offline package, not a CDN
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

    # Swagger UI 5 (OpenAPI 3.1, which FastAPI writes) from the fastapi-offline wheel:
    # a hospital network often has no internet, and FastAPI's default page loads the
    # script from a CDN, so it stayed blank there.
    app.mount(
        DOCS_ASSETS,
        StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"),
        name="api-docs-assets",
    )

    @app.get("/api/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/api/openapi.json",
            title="contourd API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    app.include_router(api_router)
    app.include_router(page_router)
    return app
