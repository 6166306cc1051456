"""End to end with real peers: storescu -> contourd serve -> storescp (the TPS)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import referenced_uids, wait_for
from node_harness import (
    NodeUnderTest,
    healthz,
    latest_state,
    node_metrics,
    node_with_tps,
    push_until_running,
    storescu_push,
)

from daemon.job_queue import SqliteJobQueue
from inference.phantom import make_phantom_series

pytestmark = [pytest.mark.interop, pytest.mark.slow]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[NodeUnderTest]:
    """A started node sending to a started TPS, stopped after the test."""
    with node_with_tps(tmp_path) as running:
        yield running


def test_pushed_ct_comes_back_as_an_rtstruct_referencing_its_images(
    tmp_path: Path, env: NodeUnderTest
) -> None:
    tps, node = env.tps, env.node
    series = make_phantom_series(tmp_path / "ct", shape_zyx=(12, 64, 64))
    storescu_push(node.port, series.paths)
    received = wait_for(tps.received, 60, f"RTSTRUCT at the TPS; log: {node.log_tail()}")
    [rs] = received
    assert rs.Modality == "RTSTRUCT"
    assert rs.StudyInstanceUID == series.headers[0].StudyInstanceUID
    assert referenced_uids(rs) == {h.SOPInstanceUID for h in series.headers}

    sent = b'contourd_jobs{state="sent"} 1.0'
    wait_for(lambda: sent in node_metrics(node.http_port), 10, "job sent in metrics")
    assert b"contourd_instances_received_total 12.0" in node_metrics(node.http_port)
    code, health = healthz(node.http_port)
    assert code == 200 and health["status"] == "ok"
    status = subprocess.run(
        [sys.executable, "-m", "daemon", "status", "-c", str(node.config_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and json.loads(status.stdout)["node_up"] is True
    assert node.stop() == 0


def test_rule_asking_for_rtstruct_and_seg_sends_both_through_the_worker(tmp_path: Path) -> None:
    with node_with_tps(tmp_path, outputs=("rtstruct", "seg")) as env:
        tps, node = env.tps, env.node
        series = make_phantom_series(tmp_path / "ct", shape_zyx=(12, 64, 64))
        storescu_push(node.port, series.paths)
        received = wait_for(
            lambda: len(tps.received()) >= 2 and tps.received(),
            60,
            f"RTSTRUCT and SEG at the TPS; log: {node.log_tail()}",
        )
        by_modality = {ds.Modality: ds for ds in received}
        assert sorted(by_modality) == ["RTSTRUCT", "SEG"], sorted(by_modality)
        seg = by_modality["SEG"]
        assert seg.StudyInstanceUID == series.headers[0].StudyInstanceUID
        assert seg.FrameOfReferenceUID == series.headers[0].FrameOfReferenceUID
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["BODY"]
        referenced = {
            r.ReferencedSOPInstanceUID
            for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        }
        assert referenced == {h.SOPInstanceUID for h in series.headers}
        assert int(seg.NumberOfFrames) >= 1


def test_result_arrives_after_the_tps_comes_up_without_duplicates(tmp_path: Path) -> None:
    with node_with_tps(tmp_path, start_tps=False) as env:  # TPS not listening yet
        tps, node = env.tps, env.node
        series = make_phantom_series(tmp_path / "ct", shape_zyx=(8, 64, 64))
        storescu_push(node.port, series.paths)
        queue = SqliteJobQueue(node.data_dir)

        def failed_attempts() -> int:
            jobs = queue.recent(1)
            return sum(d.attempts for d in queue.deliveries(jobs[0].id)) if jobs else 0

        wait_for(lambda: failed_attempts() >= 2, 60, "two failed sends while the TPS is down")
        tps.start()
        wait_for(lambda: latest_state(queue) == "sent", 60, "sent once the TPS is up")
        received = tps.received()
        assert len(received) == 1
        assert referenced_uids(received[0]) == {h.SOPInstanceUID for h in series.headers}


def test_worker_killed_mid_job_the_job_is_retried_and_completes(
    tmp_path: Path, env: NodeUnderTest
) -> None:
    tps, node = env.tps, env.node
    queue, _series = push_until_running(tmp_path, node)
    [pid] = node.worker_pids()
    os.kill(pid, signal.SIGSTOP)  # freeze it where it is, then check it is mid-job
    try:
        if latest_state(queue) != "running":
            pytest.fail("the job finished before the worker could be stopped; use a bigger series")
    finally:
        os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: latest_state(queue) == "sent",
        120,
        f"job sent after the worker restart; log: {node.log_tail()}",
    )
    received = tps.received()
    job = queue.recent(1)[0]
    assert job.state.value == "sent" and job.attempts == 2
    assert len(received) == 1
    messages = " ".join(e.message or "" for e in queue.events(job.id))
    assert "expired while running" in messages


def test_ten_series_from_five_concurrent_senders_get_one_result_each(
    tmp_path: Path, env: NodeUnderTest
) -> None:
    tps, node = env.tps, env.node
    all_series = [
        make_phantom_series(tmp_path / f"ct{i}", shape_zyx=(6, 64, 64), seed=i) for i in range(10)
    ]
    with ThreadPoolExecutor(max_workers=5) as pool:
        list(pool.map(lambda s: storescu_push(node.port, s.paths), all_series))
    wait_for(lambda: len(tps.received()) >= 10, 180, "10 results at the TPS")
    received = tps.received()
    assert len(received) == 10
    referenced = sorted(tuple(sorted(referenced_uids(rs))) for rs in received)
    expected = sorted(tuple(sorted(h.SOPInstanceUID for h in s.headers)) for s in all_series)
    assert referenced == expected  # one result per series, none twice
    assert len({rs.SOPInstanceUID for rs in received}) == 10


def test_first_sigterm_finishes_the_running_job_and_restart_resumes(
    tmp_path: Path, env: NodeUnderTest
) -> None:
    tps, node = env.tps, env.node
    queue, series = push_until_running(tmp_path, node)
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=120) == 0
    assert latest_state(queue) in ("written", "sending", "sent")
    with pytest.raises(AssertionError):
        storescu_push(node.port, series.paths[:1])  # no longer accepting associations
    node.start()
    wait_for(lambda: latest_state(queue) == "sent", 60, "sent after restart")
    assert len(tps.received()) == 1
