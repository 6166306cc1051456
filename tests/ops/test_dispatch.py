"""Dispatch: C-STORE to DCMTK storescp, retries with backoff, folders, resend."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from conftest import free_port, make_result_file, running_job, wait_for
from node_harness import StoreScp

from daemon.config import DestinationConfig, DispatchConfig
from daemon.dispatch import Dispatcher, backoff_s
from daemon.job_queue import JobState, SqliteJobQueue

pytestmark = pytest.mark.interop


def _written_result(tmp_path: Path, destinations: list[str]) -> tuple[SqliteJobQueue, Path, int]:
    """A queue holding one written job whose result is an RTSTRUCT file; (queue, file, job id)."""
    queue = SqliteJobQueue(tmp_path / "data")
    result = make_result_file(tmp_path / "r" / "rtstruct.dcm")
    job_id = running_job(queue, destinations=destinations)
    queue.add_deliveries(job_id, destinations)
    queue.transition(
        job_id, JobState.WRITTEN, worker_id="w", release_lease=True, result_files=[result]
    )
    return queue, result, job_id


def _tps_at(port: int) -> DestinationConfig:
    """The DCMTK storescp TPS on loopback ``port`` as a destination."""
    return DestinationConfig(ae_title="TPS", host="127.0.0.1", port=port)


def _fast_retries(max_attempts: int = 5) -> DispatchConfig:
    return DispatchConfig(
        max_attempts=max_attempts,
        retry_initial_s=0.3,
        retry_factor=2.0,
        retry_max_s=1.0,
        connect_timeout_s=2,
        network_timeout_s=10,
        poll_interval_s=0.2,
    )


def test_backoff_doubles_and_is_capped() -> None:
    config = DispatchConfig(retry_initial_s=5, retry_factor=2, retry_max_s=30)
    assert [backoff_s(n, config) for n in range(1, 6)] == [5, 10, 20, 30, 30]


def test_result_reaches_storescp_with_its_sop_instance_uid(tmp_path: Path) -> None:
    queue, result, job_id = _written_result(tmp_path, ["tps"])
    with StoreScp(tmp_path / "tps") as scp:
        dests = {"tps": _tps_at(scp.port)}
        dispatcher = Dispatcher(queue, lambda: dests, _fast_retries())
        assert dispatcher.drain() == 1
        received = wait_for(scp.received, 10, "storescp wrote the file")
    sent_uid = pydicom.dcmread(result).SOPInstanceUID
    assert [ds.SOPInstanceUID for ds in received] == [sent_uid]
    assert queue.get(job_id).state == JobState.SENT
    assert queue.deliveries(job_id)[0].sent_sop_instance_uids == [sent_uid]


def test_result_arrives_once_a_down_destination_comes_up(tmp_path: Path) -> None:
    queue, result, job_id = _written_result(tmp_path, ["tps"])
    scp = StoreScp(tmp_path / "tps")  # port chosen, nobody listening yet
    dests = {"tps": _tps_at(scp.port)}
    dispatcher = Dispatcher(queue, lambda: dests, _fast_retries(max_attempts=20))
    dispatcher.start()
    try:
        wait_for(
            lambda: queue.deliveries(job_id)[0].attempts >= 2,
            15,
            "two failed attempts while the destination is down",
        )
        assert queue.get(job_id).state == JobState.SENDING
        with scp:
            wait_for(lambda: queue.get(job_id).state == JobState.SENT, 20, "job sent")
            received = scp.received()
    finally:
        dispatcher.stop()
    assert len(received) == 1
    assert received[0].SOPInstanceUID == pydicom.dcmread(result).SOPInstanceUID
    failures = [e for e in queue.events(job_id) if e.state == "send_attempt_failed"]
    assert len(failures) >= 2 and "retry at" in (failures[0].message or "")


def test_job_fails_after_the_configured_number_of_attempts(tmp_path: Path) -> None:
    queue, result, job_id = _written_result(tmp_path, ["tps"])
    dests = {"tps": _tps_at(free_port())}
    dispatcher = Dispatcher(queue, lambda: dests, _fast_retries(max_attempts=3))
    dispatcher.start()
    try:
        wait_for(lambda: queue.get(job_id).state == JobState.FAILED, 20, "job failed")
    finally:
        dispatcher.stop()
    job = queue.get(job_id)
    assert queue.deliveries(job_id)[0].attempts == 3
    assert "after 3 attempts" in (job.error or "") and "TPS@127.0.0.1" in (job.error or "")


def test_unknown_destination_is_reported_with_the_known_names(tmp_path: Path) -> None:
    queue, result, job_id = _written_result(tmp_path, ["nowhere"])
    dests = {"tps": DestinationConfig(folder=tmp_path / "share")}
    Dispatcher(queue, lambda: dests, _fast_retries(max_attempts=1)).drain()
    error = queue.get(job_id).error or ""
    assert "'nowhere'" in error and "tps" in error


def test_folder_destination_and_resend_keep_one_file_per_uid(tmp_path: Path) -> None:
    queue, result, job_id = _written_result(tmp_path, ["share"])
    share = tmp_path / "share"
    dests = {"share": DestinationConfig(folder=share)}
    dispatcher = Dispatcher(queue, lambda: dests, _fast_retries())
    dispatcher.drain()
    queue.requeue_delivery(job_id, ["share"])
    dispatcher.drain()
    uid = pydicom.dcmread(result).SOPInstanceUID
    assert [p.name for p in share.iterdir()] == [f"{uid}.dcm"]
    assert queue.get(job_id).state == JobState.SENT


def test_resend_to_storescp_sends_the_same_sop_instance_uid(tmp_path: Path) -> None:
    queue, result, job_id = _written_result(tmp_path, ["tps"])
    with StoreScp(tmp_path / "tps") as scp:
        dests = {"tps": _tps_at(scp.port)}
        dispatcher = Dispatcher(queue, lambda: dests, _fast_retries())
        dispatcher.drain()
        queue.requeue_delivery(job_id, ["tps"])
        dispatcher.drain()
        received = wait_for(lambda: len(scp.received()) == 2 and scp.received(), 10, "2 files")
    assert len({ds.SOPInstanceUID for ds in received}) == 1
