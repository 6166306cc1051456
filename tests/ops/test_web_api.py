"""The web application's REST API on a real data folder: OpenAPI, login, roles, retry."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from conftest import FakeCompletion, make_result_file, running_job
from openapi_spec_validator import validate
from peer_tools import require_tool

from daemon.cli import main
from daemon.job_queue import DB_FILENAME, JobState, SqliteJobQueue
from daemon.web.context import WebContext
from daemon.web.server import WebServer
from daemon.web.users import UserStore
from model_store.registry import ModelRegistry

PASSWORD = "correct horse battery"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, SqliteJobQueue]]:
    data = tmp_path / "data"
    queue = SqliteJobQueue(data)
    users = UserStore(data / DB_FILENAME)
    for name in ("viewer", "operator", "physicist"):
        users.set_user(f"{name}1", name, PASSWORD)
    server = WebServer(queue, port=0, context=WebContext.for_queue(queue)).start()
    try:
        yield f"http://127.0.0.1:{server.port}", queue
    finally:
        server.stop()


def _as(name: str) -> requests.Session:
    session = requests.Session()
    session.auth = (name, PASSWORD)
    return session


def _failed_job(queue: SqliteJobQueue, tmp_path: Path) -> int:
    job_id = running_job(queue, rule="ct-body", models=["body 1.0.0"])
    queue.transition(
        job_id,
        JobState.FAILED,
        worker_id="w",
        message="model body 1.0.0 is not approved; run `contourd models approve body 1.0.0`",
    )
    return job_id


def test_openapi_document_is_served_and_valid(web: tuple[str, SqliteJobQueue]) -> None:
    base, _ = web
    response = requests.get(f"{base}/api/openapi.json", timeout=10)
    assert response.status_code == 200
    spec = response.json()
    validate(spec)  # raises on an invalid OpenAPI document
    paths = spec["paths"]
    for path in (
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/resend",
        "/api/jobs/{job_id}/retry",
        "/api/models",
        "/api/models/{name}/{version}",
        "/api/series/{series_uid}/segment",
        "/api/status",
        "/dicomweb/studies",
    ):
        assert path in paths, path


def test_api_docs_page_loads_swagger_ui_from_the_node_not_a_cdn(
    web: tuple[str, SqliteJobQueue],
) -> None:
    base, _ = web
    page = requests.get(f"{base}/api/docs", timeout=10)
    assert page.status_code == 200
    assert "/api/openapi.json" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    for asset, kind in (
        ("swagger-ui-bundle.js", "javascript"),
        ("swagger-ui.css", "text/css"),
        ("favicon.png", "image/png"),
    ):
        assert f"/api/docs-assets/{asset}" in page.text
        response = requests.get(f"{base}/api/docs-assets/{asset}", timeout=10)
        assert response.status_code == 200, asset
        assert kind in response.headers["content-type"], response.headers["content-type"]
        assert len(response.content) > 500
    assert requests.get(f"{base}/api/docs-assets/../app.py", timeout=10).status_code == 404


def test_login_is_needed_except_for_health_and_metrics(web: tuple[str, SqliteJobQueue]) -> None:
    base, _ = web
    assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{base}/metrics", timeout=10).status_code == 200
    assert requests.get(f"{base}/api/jobs", timeout=10).status_code == 401
    wrong = requests.get(f"{base}/api/jobs", auth=("viewer1", "not it at all"), timeout=10)
    assert wrong.status_code == 401
    page = requests.get(f"{base}/", timeout=10, allow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    assert _as("viewer1").get(f"{base}/api/jobs", timeout=10).json() == []


def test_viewer_reads_operator_retries_and_the_audit_trail_records_it(
    web: tuple[str, SqliteJobQueue], tmp_path: Path
) -> None:
    base, queue = web
    job_id = _failed_job(queue, tmp_path)
    [listed] = _as("viewer1").get(f"{base}/api/jobs?state=failed", timeout=10).json()
    assert listed["id"] == job_id and "not approved" in listed["error"]
    refused = _as("viewer1").post(f"{base}/api/jobs/{job_id}/retry", timeout=10)
    assert refused.status_code == 403 and "operator" in refused.json()["detail"]
    done = _as("operator1").post(f"{base}/api/jobs/{job_id}/retry", timeout=10)
    assert done.status_code == 200 and done.json()["state"] == "complete"
    job = queue.get(job_id)
    assert job.state == JobState.COMPLETE and job.error is None and job.attempts == 0
    assert "retry requested by operator1" in (queue.events(job_id)[-1].message or "")
    again = _as("operator1").post(f"{base}/api/jobs/{job_id}/retry", timeout=10)
    assert again.status_code == 409 and "only failed or not routed" in again.json()["detail"]
    with ModelRegistry(queue.data_dir, builtin_dir=None) as registry:
        [entry] = [e for e in registry.audit_trail() if e.action == "job-retry"]
    assert entry.by == "operator1" and entry.name == f"job {job_id}"


def test_physicist_approves_a_model_and_a_viewer_is_refused(
    web: tuple[str, SqliteJobQueue],
) -> None:
    base, _ = web
    models = _as("viewer1").get(f"{base}/api/models", timeout=10).json()
    assert {(m["name"], m["status"]) for m in models} >= {("body", "imported")}
    url = f"{base}/api/models/body/1.0.0/approve"
    assert _as("operator1").post(url, json={"note": "x"}, timeout=10).status_code == 403
    approved = _as("physicist1").post(url, json={"note": "commissioned"}, timeout=10)
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    history = _as("viewer1").get(f"{base}/api/models/body/1.0.0", timeout=10).json()["history"]
    assert [h["action"] for h in history][-1] == "approve"
    assert history[-1]["by"] == "physicist1"


def test_resend_queues_the_result_for_the_jobs_destination(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    queue = SqliteJobQueue(data)
    UserStore(data / DB_FILENAME).set_user("op", "operator", PASSWORD)
    context = WebContext.for_queue(queue)
    config = context.config()
    config.destinations = {}
    job_id = queue.submit_series(FakeCompletion())
    queue.claim("w", 60)
    queue.transition(job_id, JobState.ROUTED, worker_id="w", rule="r", models=["body 1.0.0"])
    queue.transition(job_id, JobState.RUNNING, worker_id="w")
    result = make_result_file(data / "results" / str(job_id) / "rs.dcm")
    queue.transition(
        job_id, JobState.WRITTEN, worker_id="w", release_lease=True, result_files=[result]
    )
    server = WebServer(queue, port=0, context=context).start()
    try:
        session = requests.Session()
        session.auth = ("op", PASSWORD)
        response = session.post(f"http://127.0.0.1:{server.port}/api/jobs/{job_id}/resend")
    finally:
        server.stop()
    assert response.status_code == 409 and "no destinations" in response.json()["detail"]


def test_cli_retry_all_failed_since(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "contourd.yaml"
    config.write_text(yaml.safe_dump({"node": {"data_dir": "data"}}))
    queue = SqliteJobQueue(tmp_path / "data")
    job_id = _failed_job(queue, tmp_path)
    assert main(["retry", "-c", str(config), "--all-failed", "--since", "1h"]) == 0
    assert f"job {job_id}: queued again" in capsys.readouterr().out
    assert queue.get(job_id).state == JobState.COMPLETE
    with ModelRegistry(tmp_path / "data", builtin_dir=None) as registry:
        [entry] = [e for e in registry.audit_trail() if e.action == "job-retry"]
    assert entry.name == f"job {job_id}" and entry.note == "cli"
    assert main(["retry", "-c", str(config), str(job_id)]) == 1
    assert "only failed or not routed" in capsys.readouterr().err
    future = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() + 3600))
    assert main(["retry", "-c", str(config), "--all-failed", "--since", future]) == 0
    assert "no failed jobs" in capsys.readouterr().out


def test_users_cli_adds_a_user_with_a_hashed_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import sqlite3

    config = tmp_path / "contourd.yaml"
    config.write_text(yaml.safe_dump({"node": {"data_dir": "data"}}))
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert (
        main(
            [
                "users",
                "add",
                "alice",
                "--role",
                "physicist",
                "--password-stdin",
                "-c",
                str(config),
                "--by",
                "admin",
            ]
        )
        == 0
    )
    with sqlite3.connect(tmp_path / "data" / DB_FILENAME) as conn:
        [(stored,)] = conn.execute("SELECT password_hash FROM web_users").fetchall()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert UserStore(tmp_path / "data" / DB_FILENAME).authenticate("alice", PASSWORD).role == (
        "physicist"
    )
    assert main(["models", "audit", "--json", "-c", str(config)]) == 0
    audit = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert any(e["action"] == "user-set" and e["name"] == "user alice" for e in audit)


def _received_phantom(queue: SqliteJobQueue, tmp_path: Path) -> tuple[int, list[Path]]:
    from inference.phantom import make_phantom_series

    series = make_phantom_series(tmp_path / "ct", shape_zyx=(4, 32, 32))
    completion = FakeCompletion(
        study_uid=series.headers[0].StudyInstanceUID,
        series_uid=series.headers[0].SeriesInstanceUID,
        instance_paths=list(series.paths),
        num_instances=len(series.paths),
    )
    return queue.submit_series(completion), list(series.paths)


def test_rule_tester_explains_each_rule_for_a_received_series_and_for_uploads(
    web: tuple[str, SqliteJobQueue], tmp_path: Path
) -> None:
    base, queue = web
    _, paths = _received_phantom(queue, tmp_path)
    import pydicom

    series_uid = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    viewer = _as("viewer1")
    answer = viewer.post(f"{base}/api/rules/test", params={"series_uid": series_uid}, timeout=60)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    lines = [line.strip() for line in report["text"].splitlines()]
    assert any(
        line.startswith("1. head and neck CT") and "no match: match.body_part" in line
        for line in lines
    ), lines
    assert any(
        line.startswith("2. every CT") and "MATCHED -> models body" in line for line in lines
    )
    assert report["routed"] == 1 and report["series"][0]["series_instance_uid"] == series_uid
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in paths]
    uploaded = viewer.post(f"{base}/api/rules/test", files=files, timeout=60).json()
    rules_part = [line for line in lines if line[:2] in ("1.", "2.", "=>")]
    assert [
        line.strip()
        for line in uploaded["text"].splitlines()
        if line.strip()[:2] in ("1.", "2.", "=>")
    ] == rules_part
    page = viewer.post(f"{base}/rules/test", data={"series_uid": series_uid}, timeout=60)
    assert page.status_code == 200 and "MATCHED -&gt; models body" in page.text


def test_patient_identifiers_only_with_the_setting(tmp_path: Path) -> None:
    data = tmp_path / "data"
    queue = SqliteJobQueue(data)
    UserStore(data / DB_FILENAME).set_user("v", "viewer", PASSWORD)
    job_id, paths = _received_phantom(queue, tmp_path)
    import pydicom

    ds = pydicom.dcmread(paths[0])
    name, patient_id = str(ds.PatientName), str(ds.PatientID)
    assert name and patient_id
    for allowed in (False, True):
        context = WebContext.for_queue(queue)
        context.config().http.show_patient_identifiers = allowed
        server = WebServer(queue, port=0, context=context).start()
        try:
            session = requests.Session()
            session.auth = ("v", PASSWORD)
            base = f"http://127.0.0.1:{server.port}"
            texts = [
                session.get(f"{base}/api/jobs/{job_id}", timeout=30).text,
                session.get(f"{base}/api/jobs", timeout=30).text,
                session.get(f"{base}/jobs/{job_id}", timeout=60).text,
                session.get(f"{base}/", timeout=30).text,
            ]
        finally:
            server.stop()
        assert (name in texts[0]) is allowed and (patient_id in texts[2]) is allowed
        assert name not in texts[1] and name not in texts[3]


def test_https_when_a_certificate_is_configured(tmp_path: Path) -> None:
    openssl = require_tool("openssl", "openssl")
    cert, key = tmp_path / "web.pem", tmp_path / "web.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    queue = SqliteJobQueue(tmp_path / "data")
    context = WebContext.for_queue(queue)
    http = context.config().http
    http.tls_certificate, http.tls_private_key = cert, key
    server = WebServer(queue, port=0, context=context).start()
    try:
        answer = requests.get(f"https://localhost:{server.port}/healthz", verify=str(cert))
        assert answer.status_code == 200 and answer.json()["status"] == "ok"
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://localhost:{server.port}/healthz", timeout=5)
    finally:
        server.stop()


def test_reverse_proxy_header_names_the_user(tmp_path: Path) -> None:
    queue = SqliteJobQueue(tmp_path / "data")
    UserStore(tmp_path / "data" / DB_FILENAME).set_user("carol", "viewer", None)
    context = WebContext.for_queue(queue)
    context.config().http.auth = "proxy_header"
    server = WebServer(queue, port=0, context=context).start()
    try:
        url = f"http://127.0.0.1:{server.port}/api/jobs"
        assert requests.get(url, headers={"X-Remote-User": "carol"}, timeout=10).status_code == 200
        assert (
            requests.get(url, headers={"X-Remote-User": "mallory"}, timeout=10).status_code == 401
        )
        assert requests.get(url, timeout=10).status_code == 401
        # A user without a password cannot log in with one.
        assert requests.get(url, auth=("carol", ""), timeout=10).status_code == 401
    finally:
        server.stop()


def test_segment_a_received_series_again_through_the_api(
    web: tuple[str, SqliteJobQueue], tmp_path: Path
) -> None:
    base, queue = web
    job_id = _failed_job(queue, tmp_path)
    series_uid = queue.get(job_id).series_uid
    url = f"{base}/api/series/{series_uid}/segment"
    assert _as("viewer1").post(url, timeout=10).status_code == 403
    answer = _as("operator1").post(url, timeout=10)
    assert answer.status_code == 200 and answer.json() == {"job_id": job_id, "state": "complete"}
    missing = _as("operator1").post(f"{base}/api/series/1.2.3.404/segment", timeout=10)
    assert missing.status_code == 409 and "push it first" in missing.json()["detail"]
    with ModelRegistry(queue.data_dir, builtin_dir=None) as registry:
        assert [e.action for e in registry.audit_trail() if e.name == f"job {job_id}"] == [
            "job-segment"
        ]
