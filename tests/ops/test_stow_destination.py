"""A STOW-RS destination: the dispatcher delivers a result to Orthanc's DICOMweb plugin.

Orthanc (Debian ``orthanc``) with its DICOMweb plugin (Debian
``orthanc-dicomweb``) plays a PACS that only speaks DICOMweb; the test asks
Orthanc's REST API whether it stored the instance.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FakeCompletion, free_port, make_result_file, require_tool, running_orthanc

from daemon.config import DestinationConfig, DispatchConfig
from daemon.dispatch import Dispatcher
from daemon.job_queue import DeliveryState, JobState, SqliteJobQueue

pytestmark = [pytest.mark.interop]

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def orthanc_dicomweb(tmp_path: Path) -> Iterator[int]:
    """A running Orthanc with DICOMweb at ``/dicom-web``: its HTTP port."""
    require_tool("Orthanc", "orthanc")
    if not DICOMWEB_PLUGIN.exists():
        reason = f"{DICOMWEB_PLUGIN} missing; install it with: apt-get install orthanc-dicomweb"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    config = {
        "Name": "contourd-stow-test",
        "DicomPort": free_port(),
        "HttpPort": free_port(),
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    with running_orthanc(tmp_path, config) as http_port:
        yield http_port


def _written_job(queue: SqliteJobQueue, result: Path, destination: str) -> int:
    job_id = queue.submit_series(FakeCompletion())
    queue.claim("w", 60)
    queue.transition(job_id, JobState.ROUTED, worker_id="w", rule="r", models=["body 1.0.0"])
    queue.transition(job_id, JobState.RUNNING, worker_id="w")
    queue.add_deliveries(job_id, [destination])
    queue.transition(
        job_id, JobState.WRITTEN, worker_id="w", release_lease=True, result_files=[result]
    )
    return job_id


def test_result_is_delivered_to_orthanc_by_stow_rs(tmp_path: Path, orthanc_dicomweb: int) -> None:
    http = f"http://127.0.0.1:{orthanc_dicomweb}"
    queue = SqliteJobQueue(tmp_path / "data")
    result = make_result_file(tmp_path / "data" / "results" / "rs.dcm")
    job_id = _written_job(queue, result, "pacs")
    destinations = {"pacs": DestinationConfig(stow_url=f"{http}/dicom-web")}
    dispatcher = Dispatcher(queue, lambda: destinations, DispatchConfig(max_attempts=1))
    dispatcher.drain(job_id=job_id)
    [delivery] = queue.deliveries(job_id)
    assert delivery.state == DeliveryState.SENT, delivery.last_error
    [instance] = _get(f"{http}/instances")  # type: ignore[misc]
    tags = _get(f"{http}/instances/{instance}/simplified-tags")
    assert tags["SOPInstanceUID"] == delivery.sent_sop_instance_uids[0]  # type: ignore[index]
    assert tags["Modality"] == "RTSTRUCT"  # type: ignore[index]
    assert queue.get(job_id).state == JobState.SENT


def test_unreachable_stow_service_fails_the_delivery_with_the_url(tmp_path: Path) -> None:
    queue = SqliteJobQueue(tmp_path / "data")
    result = make_result_file(tmp_path / "data" / "results" / "rs.dcm")
    job_id = _written_job(queue, result, "pacs")
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    destinations = {"pacs": DestinationConfig(stow_url=url)}
    Dispatcher(queue, lambda: destinations, DispatchConfig(max_attempts=1)).drain(job_id=job_id)
    [delivery] = queue.deliveries(job_id)
    assert delivery.state == DeliveryState.FAILED
    assert f"{url}/studies" in (delivery.last_error or "")
