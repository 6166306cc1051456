"""Shared fixtures and helpers for the operations tests (queue, dispatch, worker).

A running node with its TPS (``node_with_tps``, ``StoreScp``, ``RunningNode``,
``healthz``) comes from ``tests/node_harness.py``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from peer_tools import free_port as free_port
from peer_tools import require_tool as require_tool
from peer_tools import wait_for as wait_for
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from contourd.database import Database
from daemon.job_queue import DatabaseJobQueue, JobState

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FakeCompletion:
    """A SeriesCompletion-shaped record for queue tests that need no spool."""

    study_uid: str = "1.2.826.0.1.3680043.8.498.1"
    series_uid: str = "1.2.826.0.1.3680043.8.498.2"
    version: int = 1
    spool_dir: Path = Path("/nonexistent")
    instance_paths: list[Path] = field(default_factory=list)
    num_instances: int = 3
    calling_ae: str = "SCANNER"
    called_ae: str = "CONTOURD"
    modality: str = "CT"
    completed_at: float = 0.0
    reason: str = "quiet_period"


OpenQueue = Callable[..., DatabaseJobQueue]
"""``open_queue(data_dir, **kwargs)``: a queue on the test's backend."""


@pytest.fixture
def open_queue(make_database: Callable[[Path], Database]) -> OpenQueue:
    """Queues on the parametrised backend (SQLite, PostgreSQL) of the test."""

    def factory(data_dir: Path, **kwargs: Any) -> DatabaseJobQueue:
        return DatabaseJobQueue(data_dir, database=make_database(data_dir), **kwargs)

    return factory


wait_for_fixture = pytest.fixture(name="wait_for")(lambda: wait_for)


def running_job(
    queue: DatabaseJobQueue, completion: FakeCompletion | None = None, **routed: Any
) -> int:
    """Submit a job and take it to ``running`` under worker ``w``'s lease.

    ``routed`` are the fields the routing step sets (``rule``, ``models``,
    ``destinations``). Returns the job id.
    """
    job_id = queue.submit_series(completion or FakeCompletion())
    queue.claim("w", lease_s=60)
    queue.transition(job_id, JobState.ROUTED, worker_id="w", **routed)
    queue.transition(job_id, JobState.RUNNING, worker_id="w")
    return job_id


def submit_phantom(
    tmp_path: Path, queue: DatabaseJobQueue, shape: tuple[int, int, int] = (8, 64, 64)
) -> tuple[int, list[pydicom.Dataset]]:
    """Submit a phantom CT (written to ``tmp_path / "series"``) as a job; (job id, headers)."""
    from inference.phantom import make_phantom_series

    series = make_phantom_series(tmp_path / "series", shape_zyx=shape)
    ds = series.headers[0]
    job_id = queue.submit_series(
        FakeCompletion(
            study_uid=ds.StudyInstanceUID,
            series_uid=ds.SeriesInstanceUID,
            spool_dir=series.directory,
            instance_paths=list(series.paths),
            num_instances=len(series.paths),
        )
    )
    return job_id, series.headers


def referenced_uids(rs: pydicom.Dataset) -> set[str]:
    """SOP Instance UIDs of the images an RTSTRUCT's contours reference."""
    series = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    return {
        c.ReferencedSOPInstanceUID
        for c in series.RTReferencedSeriesSequence[0].ContourImageSequence
    }


def make_result_file(path: Path, sop_uid: str | None = None) -> Path:
    """A small valid RT Structure Set file (no contours) for dispatch tests."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.StructureSetLabel = "AUTO"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def body_rule_config(data_dir: Path, destinations: dict[str, dict[str, object]], **rule: object):
    """A ContourdConfig routing CT to the body model and on to ``destinations``."""
    from daemon.config import ContourdConfig

    return ContourdConfig.model_validate(
        {
            "node": {"data_dir": str(data_dir), "fsync": False},
            "destinations": destinations,
            "dispatch": {"retry_initial_s": 0.3, "retry_max_s": 1.0, "poll_interval_s": 0.2},
            "worker": {"lease_s": 3.0, "poll_interval_s": 0.1},
            "rules": [
                {
                    "name": "ct-body",
                    "match": {"modality": "CT"},
                    "model": "body",
                    "send_to": list(destinations),
                    **rule,
                }
            ],
        }
    )


@contextmanager
def running_orthanc(tmp_path: Path, config: dict[str, object]) -> Iterator[int]:
    """Run Debian's Orthanc with ``config`` (plus throwaway storage) until the block ends.

    Yields once Orthanc answers on ``config["HttpPort"]``.
    """
    import json
    import urllib.error
    import urllib.request

    binary = require_tool("Orthanc", "orthanc")
    http_port = int(config["HttpPort"])  # type: ignore[call-overload]
    full = {
        "StorageDirectory": str(tmp_path / "orthanc-storage"),
        "IndexDirectory": str(tmp_path / "orthanc-index"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        **config,
    }
    config_path = tmp_path / "orthanc.json"
    config_path.write_text(json.dumps(full))
    log = (tmp_path / "orthanc.log").open("w")
    proc = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=5).close()
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return proc.poll() is not None  # stop waiting if it died

    try:
        wait_for(up, 60, "Orthanc did not answer on its HTTP port")
        assert proc.poll() is None, f"Orthanc exited; see {tmp_path / 'orthanc.log'}"
        yield http_port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
