"""Retry once the cause is fixed: a job fails for an unapproved model, a physicist
approves it through the API, an operator retries the job, the RTSTRUCT reaches the TPS."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from conftest import wait_for
from node_harness import node_with_tps, storescu_push

from daemon.job_queue import JobState, SqliteJobQueue
from inference.phantom import make_phantom_series

pytestmark = [pytest.mark.interop, pytest.mark.slow]

PASSWORD = "retry test password"


def test_failed_job_runs_again_after_its_model_is_approved(tmp_path: Path) -> None:
    # The body model is not approved: the job fails until a physicist approves it.
    users = {"phys": "physicist", "op": "operator"}
    with node_with_tps(tmp_path, approve=False, users=users, password=PASSWORD) as env:
        tps, node, data = env.tps, env.node, env.data_dir
        api = f"http://127.0.0.1:{node.http_port}/api"
        series = make_phantom_series(tmp_path / "ct", shape_zyx=(8, 48, 48))
        storescu_push(node.port, series.paths)
        queue = SqliteJobQueue(data)

        def failed() -> object:
            jobs = queue.recent()
            return jobs and jobs[0].state == JobState.FAILED and jobs[0]

        job = wait_for(failed, 60, f"the job failing; log: {node.log_tail()}")
        assert "contourd models approve body" in (job.error or "")  # type: ignore[attr-defined]
        job_id = job.id  # type: ignore[attr-defined]

        approve = requests.post(
            f"{api}/models/body/1.0.0/approve",
            json={"note": "commissioned"},
            auth=("phys", PASSWORD),
            timeout=30,
        )
        assert approve.status_code == 200, approve.text
        retry = requests.post(f"{api}/jobs/{job_id}/retry", auth=("op", PASSWORD), timeout=30)
        assert retry.status_code == 200, retry.text

        [rs] = wait_for(tps.received, 90, f"RTSTRUCT at the TPS; log: {node.log_tail()}")
        assert rs.StudyInstanceUID == series.headers[0].StudyInstanceUID
        detail = requests.get(f"{api}/jobs/{job_id}", auth=("op", PASSWORD), timeout=30).json()
        assert detail["state"] == "sent" and detail["error"] is None
        assert any("retry requested by op" in (e["message"] or "") for e in detail["events"])
