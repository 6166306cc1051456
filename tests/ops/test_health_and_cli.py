"""/healthz, /metrics and the jobs/status/resend commands on a real data folder."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
import yaml
from conftest import FakeCompletion, OpenQueue, make_result_file, running_job

from daemon.cli import main
from daemon.health_http import collect_status, write_heartbeat
from daemon.job_queue import JobState, SqliteJobQueue
from daemon.web.server import WebServer


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "contourd.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "node": {"data_dir": "data"},
                "destinations": {"share": {"folder": str(tmp_path / "share")}},
            }
        )
    )
    return path


def _sent_job(queue: SqliteJobQueue, tmp_path: Path) -> int:
    job_id = running_job(queue, rule="ct-body", models=["body 1.0.0"])
    queue.add_deliveries(job_id, ["share"])
    result = make_result_file(tmp_path / "data" / "results" / str(job_id) / "rtstruct.dcm")
    queue.transition(
        job_id,
        JobState.WRITTEN,
        worker_id="w",
        release_lease=True,
        result_files=[result],
        destinations=["share"],
        warnings=["ROI 'x' is empty; not written"],
    )
    queue.claim_delivery("d", 60)
    queue.finish_delivery(job_id, "share", "d", ok=True)
    return job_id


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _scrape_metrics(queue: SqliteJobQueue) -> str:
    """``GET /metrics`` from a WebServer on ``queue``; the text (status 200 checked)."""
    server = WebServer(queue, port=0).start()
    try:
        code, body = _get(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.stop()
    assert code == 200
    return body.decode()


def test_metrics_report_jobs_by_state_and_stage_latencies(tmp_path: Path) -> None:
    queue = SqliteJobQueue(tmp_path / "data")
    _sent_job(queue, tmp_path)
    queue.submit_series(FakeCompletion(series_uid="1.2.3.99"))
    text = _scrape_metrics(queue)
    assert 'contourd_jobs{state="complete"} 1.0' in text
    assert 'contourd_jobs{state="sent"} 1.0' in text
    assert "contourd_queue_length 1.0" in text
    assert 'contourd_stage_latency_seconds_count{stage="total"} 1.0' in text
    assert "contourd_instances_received_total 0.0" in text


def test_series_still_arriving_are_counted_in_status_and_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.instance_db import DB_FILENAME, InstanceDB

    config = _config(tmp_path)
    queue = SqliteJobQueue(tmp_path / "data")
    db = InstanceDB(tmp_path / "data" / DB_FILENAME)
    for n, series_uid in enumerate(["1.2.3.1", "1.2.3.2", "1.2.3.3"]):
        db.record_instance(
            {"sop_instance_uid": f"1.2.3.9.{n}", "series_uid": series_uid, "path": f"x{n}.dcm"},
            {"series_uid": series_uid, "version": 1, "state": "receiving", "handed_off": 0},
        )
    db.mark_complete("1.2.3.3", 1, completed_at="2026-11-29T00:00:00Z", reason="quiet_period")
    # A new version of a completed series that is arriving counts once.
    db.mark_complete("1.2.3.1", 1, completed_at="2026-11-29T00:00:00Z", reason="quiet_period")
    db.record_instance(
        {"sop_instance_uid": "1.2.3.9.9", "series_uid": "1.2.3.1", "path": "y.dcm"},
        {"series_uid": "1.2.3.1", "version": 2, "state": "receiving", "handed_off": 0},
    )
    db.close()
    server = WebServer(queue, port=0).start()
    try:
        text = _get(f"http://127.0.0.1:{server.port}/metrics")[1].decode()
    finally:
        server.stop()
    assert "contourd_series_receiving 2.0" in text
    capsys.readouterr()
    main(["status", "-c", str(config)])
    assert "2 series still arriving" in capsys.readouterr().out
    main(["status", "-c", str(config), "--json"])
    assert json.loads(capsys.readouterr().out)["series_receiving"] == 2


def test_healthz_is_503_when_a_node_check_fails(tmp_path: Path) -> None:
    queue = SqliteJobQueue(tmp_path / "data")
    checks = {"healthy": True, "worker_alive": True}
    server = WebServer(queue, port=0, extra_checks=lambda: dict(checks)).start()
    try:
        code, body = _get(f"http://127.0.0.1:{server.port}/healthz")
        assert code == 200 and json.loads(body)["status"] == "ok"
        checks.update(healthy=False, worker_alive=False)
        code, body = _get(f"http://127.0.0.1:{server.port}/healthz")
        assert code == 503 and json.loads(body)["checks"]["worker_alive"] is False
        assert _get(f"http://127.0.0.1:{server.port}/nope")[0] == 404
    finally:
        server.stop()


def test_jobs_json_lists_rule_model_stages_and_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    job_id = _sent_job(SqliteJobQueue(tmp_path / "data"), tmp_path)
    assert main(["jobs", "-c", str(config), "--json"]) == 0
    [job] = json.loads(capsys.readouterr().out)
    assert job["id"] == job_id and job["state"] == "sent"
    assert job["rule"] == "ct-body" and job["models"] == ["body 1.0.0"]
    assert "total" in job["stage_s"] and job["warnings"]
    assert main(["jobs", "-c", str(config), str(job_id), "--json"]) == 0
    detail = json.loads(capsys.readouterr().out)
    assert [d["state"] for d in detail["deliveries"]] == ["sent"]
    assert main(["jobs", "-c", str(config)]) == 0
    assert "ct-body" in capsys.readouterr().out


def test_status_says_whether_the_node_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    queue = SqliteJobQueue(tmp_path / "data")
    job_id = queue.submit_series(FakeCompletion())
    queue.claim("w", 60)
    queue.transition(job_id, JobState.FAILED, worker_id="w", message="model 'x' not approved")
    assert main(["status", "-c", str(config), "--json"]) == 3
    status = json.loads(capsys.readouterr().out)
    assert status["node_up"] is False and status["last_error"]["job_id"] == job_id
    write_heartbeat(tmp_path / "data", {"port": 11112, "http_port": 8080})
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "up (pid" in out and "not approved" in out


def test_resend_without_a_running_node_sends_the_same_file_now(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    job_id = _sent_job(SqliteJobQueue(tmp_path / "data"), tmp_path)
    assert not (tmp_path / "share").exists()  # the first "send" was only recorded
    for _ in range(2):
        assert main(["resend", "-c", str(config), str(job_id)]) == 0
        assert "share: sent" in capsys.readouterr().out
    uid = pydicom.dcmread(tmp_path / "data" / "results" / str(job_id) / "rtstruct.dcm")
    assert [p.name for p in (tmp_path / "share").glob("*.dcm")] == [f"{uid.SOPInstanceUID}.dcm"]
    assert main(["resend", "-c", str(config), str(job_id), "--to", "nowhere"]) == 1
    assert "unknown destination" in capsys.readouterr().err


def test_status_and_metrics_show_every_worker_and_the_queue_per_priority(
    tmp_path: Path, open_queue: OpenQueue
) -> None:
    """Two workers (one busy, one idle) and jobs at two priorities, on each backend."""
    queue = open_queue(tmp_path / "data")
    queue.submit_series(FakeCompletion(series_uid="1.2.3.1"))
    queue.submit_series(FakeCompletion(series_uid="1.2.3.2"))
    urgent = queue.submit_series(FakeCompletion(series_uid="1.2.3.3"))
    queue.conn.execute("UPDATE jobs SET priority = 5 WHERE id = ?", (urgent,))
    claimed = queue.claim("gpu-a", 60)
    assert claimed is not None and claimed.id == urgent
    queue.heartbeat("gpu-a", current_job=urgent, state="busy", host="gpu-host-a", pid=4242)
    queue.heartbeat("gpu-b", current_job=None, host="gpu-host-b", pid=4343)
    text = _scrape_metrics(queue)
    assert 'contourd_jobs_waiting{priority="0"} 2.0' in text
    assert 'contourd_jobs_waiting{priority="5"}' not in text  # claimed: no longer waiting
    assert (
        f'contourd_worker_current_job{{host="gpu-host-a",pid="4242",worker="gpu-a"}} {urgent}.0'
        in text
    )
    assert 'contourd_worker_current_job{host="gpu-host-b",pid="4343",worker="gpu-b"} 0.0' in text
    status = collect_status(queue)
    assert status["waiting_by_priority"] == {"0": 2}
    assert {(w["worker_id"], w["host"], w["pid"], w["current_job"]) for w in status["workers"]} == {
        ("gpu-a", "gpu-host-a", 4242, urgent),
        ("gpu-b", "gpu-host-b", 4343, None),
    }
    queue.remove_worker("gpu-b")
    assert [w.worker_id for w in queue.workers()] == ["gpu-a"]
