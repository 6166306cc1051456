"""The server-rendered pages (Jinja2): login, queue, job, models, rules.

Every page reads through the same functions as the API (:mod:`daemon.web.api`),
and every button posts a form to a page route that calls the same action and
redirects back (SameSite=strict session cookie; no script needed except the
job page's slice slider and the queue's refresh).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from contourd.errors import WebAuthError
from daemon.job_queue import JobState
from daemon.web.api import (
    UserDep,
    context_of,
    decide_model,
    job_view,
    list_jobs,
    list_model_views,
    resend_job,
    retry_job,
    rules_yaml,
    test_rules_on_series,
    test_rules_on_uploads,
)

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
router = APIRouter(include_in_schema=False)
QUEUE_REFRESH_S = 5


def _safe_next(target: str) -> str:
    """Only local paths after login (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:  # noqa: A002
    return templates.TemplateResponse(
        request, "login.html", {"next": _safe_next(next), "error": None, "user": None}
    )


@router.post("/login")
def login(
    request: Request,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",  # noqa: A002
) -> Response:
    try:
        user = context_of(request).users.authenticate(username, password)
    except WebAuthError as err:
        return templates.TemplateResponse(
            request,
            "login.html",
            {"next": _safe_next(next), "error": str(err), "user": None},
            status_code=401,
        )
    request.session["user"] = user.name
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/logout")
def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@router.get("/", response_class=HTMLResponse)
def queue_page(
    request: Request,
    user: UserDep,
    state: str = "",
    rule: str = "",
    model: str = "",
    q: str = "",
) -> Response:
    ctx = context_of(request)
    jobs = list_jobs(
        ctx.queue, state=state or None, rule=rule or None, model=model or None, text=q or None
    )
    return templates.TemplateResponse(
        request,
        "queue.html",
        {
            "user": user,
            "jobs": jobs,
            "states": [s.value for s in JobState],
            "filters": {"state": state, "rule": rule, "model": model, "q": q},
            "refresh_s": QUEUE_REFRESH_S,
            "message": request.query_params.get("message"),
        },
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, user: UserDep, job_id: int) -> Response:
    ctx = context_of(request)
    detail = job_view(ctx, job_id)
    images: dict[str, Any] | None = None
    image_error = None
    try:
        loaded = ctx.images.get(ctx.queue.get(job_id))
        images = {
            "num_slices": loaded.num_slices,
            "start": loaded.busiest_slice(),
            "rois": loaded.rois,
            "notes": loaded.notes,
        }
    except Exception as err:  # boundary: the page shows the job even when images fail
        image_error = f"images cannot be shown: {err}"
    return templates.TemplateResponse(
        request,
        "job.html",
        {
            "user": user,
            "job": detail,
            "images": images,
            "image_error": image_error,
            "destinations": sorted(ctx.config().destinations),
            "message": request.query_params.get("message"),
        },
    )


def _back(path: str, message: str) -> Response:
    return RedirectResponse(f"{path}?message={quote(message)}", status_code=303)


@router.post("/jobs/{job_id}/resend")
def job_resend(request: Request, user: UserDep, job_id: int) -> Response:
    result = resend_job(context_of(request), user, job_id, None)
    return _back(f"/jobs/{job_id}", f"queued for {', '.join(result['queued_for'])}")


@router.post("/jobs/{job_id}/retry")
def job_retry(request: Request, user: UserDep, job_id: int) -> Response:
    retry_job(context_of(request), user, job_id)
    return _back(f"/jobs/{job_id}", "queued again; the workers route and segment it anew")


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, user: UserDep) -> Response:
    return templates.TemplateResponse(
        request,
        "models.html",
        {
            "user": user,
            "models": list_model_views(context_of(request)),
            "message": request.query_params.get("message"),
        },
    )


@router.post("/models/{name}/{version}/{action}")
def model_decide(
    request: Request,
    user: UserDep,
    name: str,
    version: str,
    action: str,
    note: Annotated[str, Form()] = "",
) -> Response:
    if action not in ("approve", "retire"):
        return _back("/models", f"unknown action {action!r}")
    decide_model(context_of(request), user, name, version, action, note or None)
    return _back("/models", f"{name} {version}: {action} recorded")


def _rules_page(request: Request, user: Any, report: str | None, series_uid: str = "") -> Response:
    ctx = context_of(request)
    received = []
    seen = set()
    for job in ctx.queue.recent(limit=200):
        if job.series_uid not in seen:
            seen.add(job.series_uid)
            received.append(job)
    return templates.TemplateResponse(
        request,
        "rules.html",
        {
            "user": user,
            "rules_yaml": rules_yaml(ctx),
            "received": received[:50],
            "report": report,
            "series_uid": series_uid,
        },
    )


@router.get("/rules", response_class=HTMLResponse)
def rules_page(request: Request, user: UserDep) -> Response:
    return _rules_page(request, user, None)


@router.post("/rules/test", response_class=HTMLResponse)
async def rules_test(request: Request, user: UserDep) -> Response:
    form = await request.form()
    ctx = context_of(request)
    series_uid = str(form.get("series_uid") or "")
    uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile) and f.filename]
    from starlette.concurrency import run_in_threadpool

    if uploads:
        files = [(f.filename or "", await f.read()) for f in uploads]
        text, _ = await run_in_threadpool(test_rules_on_uploads, ctx, files)
    elif series_uid:
        text, _ = await run_in_threadpool(test_rules_on_series, ctx, series_uid)
    else:
        text = "pick a received series or upload DICOM files"
    return _rules_page(request, user, text, series_uid)
