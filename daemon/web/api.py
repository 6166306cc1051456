"""The REST API (``/api``) and STOW-RS (``/dicomweb``); the pages call the same functions.

Jobs: list (filters), get, resend, retry (one, or every failed one since a
time); slices of a job's series with its contours (PNG). Models: list, get
(card, approval history, evaluation), approve and retire (physicists).
Series: segment a received series again. Rules: the loaded rules and the
rule tester. Status: what ``contourd status`` shows. Answers carry UIDs, AE
titles and series descriptions, never patient name, ID or birth date unless
``http.show_patient_identifiers`` is set (job detail only).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Annotated, Any

import pydicom
import yaml
from fastapi import APIRouter, Body, Depends, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from contourd.errors import JobError, StowBodyError
from daemon.audit import record_change
from daemon.cli.jobs import job_detail, job_summary
from daemon.cli.resend import resend_targets
from daemon.cli.routes import report_routes
from daemon.health_http import collect_status
from daemon.job_queue import Job, SqliteJobQueue, parse_since
from daemon.web.context import WebContext, current_user
from daemon.web.stow import FAILURE_CANNOT_UNDERSTAND, MultipartSplitter
from daemon.web.users import User, require_role
from model_store.registry import ModelRecord, ModelRegistry

router = APIRouter()
UserDep = Annotated[User, Depends(current_user)]
PATIENT_KEYWORDS = ["PatientName", "PatientID", "PatientBirthDate"]


def context_of(request: Request) -> WebContext:
    """The application's :class:`WebContext`."""
    return request.app.state.context  # type: ignore[no-any-return]


def registry_of(ctx: WebContext) -> ModelRegistry:
    """A registry connection for this request (close it: use ``with``)."""
    return ModelRegistry(ctx.data_dir, builtin_dir=None, database=ctx.queue.database)


def audit(ctx: WebContext, user: User, action: str, subject: str, after: dict[str, Any]) -> None:
    """Write a web user's change to the audit trail."""
    record_change(
        ctx.data_dir,
        by=user.name,
        action=action,
        subject=subject,
        after=after,
        note="web",
        database=ctx.queue.database,
    )


# -- jobs ---------------------------------------------------------------------------


def list_jobs(
    queue: SqliteJobQueue,
    *,
    state: str | None = None,
    rule: str | None = None,
    model: str | None = None,
    text: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Newest jobs first, filtered: ``state`` exact, ``rule``/``model``/``text`` substrings."""
    out = []
    for job in queue.recent(limit=max(limit * 10, 500)):
        if state and job.state.value != state:
            continue
        if rule and rule.lower() not in (job.rule or "").lower():
            continue
        if model and not any(model.lower() in m.lower() for m in job.models):
            continue
        if text:
            haystack = " ".join(
                [job.series_uid, job.series_description, job.calling_ae, job.error or ""]
            ).lower()
            if text.lower() not in haystack:
                continue
        out.append(job_summary(queue, job))
        if len(out) >= limit:
            break
    return out


def patient_of(job: Job) -> dict[str, str]:
    """Patient name, ID and birth date from the job's first image (only when allowed)."""
    for path in job.instance_paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=PATIENT_KEYWORDS)
        except (OSError, ValueError):
            continue
        return {k: str(ds.get(k, "")) for k in PATIENT_KEYWORDS}
    return {}


def job_view(ctx: WebContext, job_id: int) -> dict[str, Any]:
    """A job's detail as the API and the job page show it."""
    job = ctx.queue.get(job_id)
    detail = job_detail(ctx.queue, job)
    if ctx.config().http.show_patient_identifiers:
        detail["patient"] = patient_of(job)
    return detail


def resend_job(ctx: WebContext, user: User, job_id: int, to: list[str] | None) -> dict[str, Any]:
    """Queue the job's result for sending again (operator); the node's dispatcher sends it."""
    require_role(user, "operator", "resending a result")
    job = ctx.queue.get(job_id)
    targets = resend_targets(ctx.config(), job, to)
    ctx.queue.requeue_delivery(job_id, targets)
    audit(ctx, user, "job-resend", f"job {job_id}", {"destinations": targets})
    return {"job_id": job_id, "queued_for": targets}


def retry_job(ctx: WebContext, user: User, job_id: int, *, any_finished: bool = False) -> Job:
    """Run a failed job again (operator); ``any_finished``: re-segment a finished one."""
    require_role(user, "operator", "retrying a job")
    job = ctx.queue.retry(job_id, by=user.name, any_finished=any_finished)
    audit(ctx, user, "job-segment" if any_finished else "job-retry", f"job {job_id}", {})
    return job


@router.get("/api/status", tags=["status"], summary="Node status (contourd status)")
def api_status(request: Request, user: UserDep) -> dict[str, Any]:
    status = collect_status(context_of(request).queue)
    status.pop("data_dir", None)
    return status


@router.get("/api/jobs", tags=["jobs"], summary="Recent jobs, newest first, filtered")
def api_jobs(
    request: Request,
    user: UserDep,
    state: str | None = None,
    rule: str | None = None,
    model: str | None = None,
    q: Annotated[str | None, Query(description="text in series UID/description/AE/error")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return list_jobs(
        context_of(request).queue, state=state, rule=rule, model=model, text=q, limit=limit
    )


@router.get("/api/jobs/{job_id}", tags=["jobs"], summary="One job: events, deliveries")
def api_job(request: Request, user: UserDep, job_id: int) -> dict[str, Any]:
    return job_view(context_of(request), job_id)


@router.post("/api/jobs/{job_id}/resend", tags=["jobs"], summary="Send the result again")
def api_resend(
    request: Request,
    user: UserDep,
    job_id: int,
    to: Annotated[list[str] | None, Body(embed=True)] = None,
) -> dict[str, Any]:
    return resend_job(context_of(request), user, job_id, to)


@router.post("/api/jobs/{job_id}/retry", tags=["jobs"], summary="Run a failed job again")
def api_retry(request: Request, user: UserDep, job_id: int) -> dict[str, Any]:
    job = retry_job(context_of(request), user, job_id)
    return {"job_id": job.id, "state": job.state.value}


@router.post("/api/jobs/retry-failed", tags=["jobs"], summary="Run every failed job again")
def api_retry_failed(
    request: Request,
    user: UserDep,
    since: Annotated[str, Query(description="age (12h, 2d) or ISO time, UTC")] = "1d",
) -> dict[str, Any]:
    ctx = context_of(request)
    require_role(user, "operator", "retrying jobs")
    retried, refused = [], {}
    for job in ctx.queue.retryable_since(parse_since(since)):
        try:
            retry_job(ctx, user, job.id)
            retried.append(job.id)
        except JobError as err:
            refused[str(job.id)] = str(err)
    return {"retried": retried, "refused": refused}


@router.get("/api/jobs/{job_id}/slices", tags=["jobs"], summary="Slice count and ROI list")
def api_slices(request: Request, user: UserDep, job_id: int) -> dict[str, Any]:
    ctx = context_of(request)
    images = ctx.images.get(ctx.queue.get(job_id))
    return {
        "num_slices": images.num_slices,
        "start_slice": images.busiest_slice(),
        "rois": [
            {"name": r.name, "color_rgb": list(r.color_rgb), "type": r.interpreted_type}
            for r in images.rois
        ],
        "notes": images.notes,
    }


@router.get(
    "/api/jobs/{job_id}/slices/{index}.png",
    tags=["jobs"],
    summary="One slice (0-based) with the contours drawn",
    response_class=Response,
)
def api_slice_png(request: Request, user: UserDep, job_id: int, index: int) -> Response:
    ctx = context_of(request)
    images = ctx.images.get(ctx.queue.get(job_id))
    return Response(images.png(index), media_type="image/png")


# -- series -------------------------------------------------------------------------


@router.post(
    "/api/series/{series_uid}/segment",
    tags=["series"],
    summary="Route and segment a received series again (its newest job)",
)
def api_segment(request: Request, user: UserDep, series_uid: str) -> dict[str, Any]:
    ctx = context_of(request)
    jobs = ctx.queue.jobs_for_series(series_uid)
    if not jobs:
        raise JobError(f"no series {series_uid} has been received; push it first")
    newest = max(jobs, key=lambda j: (j.version, -j.rule_slot))
    job = retry_job(ctx, user, newest.id, any_finished=True)
    return {"job_id": job.id, "state": job.state.value}


# -- models -------------------------------------------------------------------------


def model_view(registry: ModelRegistry, record: ModelRecord) -> dict[str, Any]:
    """A model version with its evaluation report and approval history."""
    out = record.to_dict()
    out["evaluation"] = (
        record.card.evaluation.model_dump(mode="json") if record.card.evaluation else None
    )
    out["history"] = [e.to_dict() for e in registry.audit_trail(record.name, record.version)]
    return out


def list_model_views(ctx: WebContext) -> list[dict[str, Any]]:
    """Every model version, as :func:`model_view`."""
    with registry_of(ctx) as registry:
        return [model_view(registry, r) for r in registry.list_models()]


def decide_model(
    ctx: WebContext, user: User, name: str, version: str, action: str, note: str | None
) -> dict[str, Any]:
    """Approve or retire a model version (physicist); the registry audits it."""
    require_role(user, "physicist", f"{action} a model")
    with registry_of(ctx) as registry:
        if action == "approve":
            record = registry.approve(name, version, by=user.name, note=note)
        else:
            record = registry.retire(name, version, by=user.name, note=note)
        return model_view(registry, record)


@router.get("/api/models", tags=["models"], summary="Every model version")
def api_models(request: Request, user: UserDep) -> list[dict[str, Any]]:
    return list_model_views(context_of(request))


@router.get("/api/models/{name}/{version}", tags=["models"], summary="One model version")
def api_model(request: Request, user: UserDep, name: str, version: str) -> dict[str, Any]:
    with registry_of(context_of(request)) as registry:
        return model_view(registry, registry.get(name, version))


@router.post(
    "/api/models/{name}/{version}/{action}",
    tags=["models"],
    summary="Approve or retire a model version (physicists)",
)
def api_model_decide(
    request: Request,
    user: UserDep,
    name: str,
    version: str,
    action: str,
    note: Annotated[str | None, Body(embed=True)] = None,
) -> dict[str, Any]:
    if action not in ("approve", "retire"):
        raise JobError(f"action {action!r}: expected approve or retire")
    return decide_model(context_of(request), user, name, version, action, note)


# -- rules --------------------------------------------------------------------------


def rules_yaml(ctx: WebContext) -> str:
    """The loaded config's rules and destinations as YAML."""
    config = ctx.config()
    shown = config.model_dump(
        mode="json", include={"rules", "destinations", "series"}, by_alias=True, exclude_none=True
    )
    return yaml.safe_dump(shown, sort_keys=False)


def test_rules(ctx: WebContext, paths: list[Path], calling_ae: str | None) -> tuple[str, dict]:
    """``contourd routes test`` on ``paths``: (text with per-condition explanation, JSON)."""
    config = ctx.config()
    text, document = io.StringIO(), io.StringIO()
    report_routes(config, paths, calling_ae=calling_ae, called_ae=None, as_json=False, out=text)
    report_routes(config, paths, calling_ae=calling_ae, called_ae=None, as_json=True, out=document)
    return text.getvalue(), yaml.safe_load(document.getvalue())


def test_rules_on_series(ctx: WebContext, series_uid: str) -> tuple[str, dict]:
    """The rule tester on a received series (as its sender's AE title)."""
    jobs = ctx.queue.jobs_for_series(series_uid)
    if not jobs:
        raise JobError(f"no series {series_uid} has been received; pick one from the queue")
    job = jobs[-1]
    return test_rules(ctx, list(job.instance_paths), job.calling_ae)


def test_rules_on_uploads(ctx: WebContext, files: list[tuple[str, bytes]]) -> tuple[str, dict]:
    """The rule tester on uploaded DICOM files (kept only for the test)."""
    with tempfile.TemporaryDirectory(prefix="contourd-rules-") as folder:
        for n, (_name, data) in enumerate(files):
            (Path(folder) / f"{n:05d}.dcm").write_bytes(data)
        return test_rules(ctx, [Path(folder)], None)


@router.get("/api/rules", tags=["rules"], summary="The loaded rules (YAML text)")
def api_rules(request: Request, user: UserDep) -> dict[str, Any]:
    return {"yaml": rules_yaml(context_of(request))}


@router.post("/api/rules/test", tags=["rules"], summary="Route a received series or files")
def api_rules_test(
    request: Request,
    user: UserDep,
    series_uid: Annotated[str | None, Query()] = None,
    files: Annotated[list[UploadFile] | None, File()] = None,
) -> dict[str, Any]:
    ctx = context_of(request)
    if series_uid:
        text, document = test_rules_on_series(ctx, series_uid)
    elif files:
        text, document = test_rules_on_uploads(
            ctx, [(f.filename or "", f.file.read()) for f in files]
        )
    else:
        raise JobError("give series_uid (a received series) or upload DICOM files")
    return {"text": text, **document}


# -- DICOMweb -----------------------------------------------------------------------


@router.post(
    "/dicomweb/studies",
    tags=["dicomweb"],
    summary="STOW-RS: store instances (multipart/related; type=application/dicom)",
)
async def stow_rs(request: Request, user: UserDep) -> Response:
    ctx = context_of(request)
    require_role(user, "operator", "storing images (STOW-RS)")
    if ctx.stow is None:
        return JSONResponse(
            {"detail": "this server has no receive node (run `contourd serve`)"}, status_code=503
        )
    peer = request.client.host if request.client else "?"
    try:
        splitter = MultipartSplitter(request.headers.get("content-type", ""))
    except StowBodyError as err:
        return JSONResponse({"detail": str(err)}, status_code=415)
    stow = ctx.stow.begin(user=user.name, peer=peer)
    try:
        # Each instance is stored as soon as its part has arrived.
        async for chunk in request.stream():
            for part in splitter.feed(chunk):
                await run_in_threadpool(stow.add, part)
        splitter.close()
    except StowBodyError as err:
        if splitter.parts_seen == 0:
            await run_in_threadpool(stow.finish)
            return JSONResponse({"detail": str(err)}, status_code=400)
        stow.refuse({}, FAILURE_CANNOT_UNDERSTAND, str(err))
    status, answer = await run_in_threadpool(stow.finish)
    return JSONResponse(answer, status_code=status, media_type="application/dicom+json")
