"""Shared fixtures and helpers for the operations tests (queue, dispatch, node)."""

from __future__ import annotations

import socket
import subprocess
import time
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
from daemon.job_queue import DatabaseJobQueue

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


class StoreScp:
    """DCMTK ``storescp`` playing the planning system, on a free loopback port.

    Received files land in ``out_dir``; :meth:`received` reads their SOP
    Instance UIDs.
    """

    def __init__(self, out_dir: Path, ae_title: str = "TPS", port: int | None = None) -> None:
        self.binary = require_tool("storescp", "dcmtk")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreScp:
        self.proc = subprocess.Popen(
            [self.binary, "-aet", self.ae_title, "-od", str(self.out_dir), "+uf", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, 10, f"storescp listening on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def received(self) -> list[pydicom.Dataset]:
        """Every file storescp has finished writing so far, fully read.

        storescp writes straight to the final file name, so a file that is
        still being written does not parse yet; it is left for the next call.
        """
        done = []
        for path in sorted(self.out_dir.iterdir()):
            if not path.is_file():
                continue
            try:
                done.append(pydicom.dcmread(path))
            except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError):
                continue
        return done

    def __enter__(self) -> StoreScp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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


def approve_body_model(data_dir: Path, database_url: str | None = None) -> None:
    """Approve the built-in ``body`` model in a throwaway data folder (and database)."""
    from model_store.registry import ModelRegistry

    registry = ModelRegistry(data_dir, database=Database(data_dir, database_url))
    try:
        registry.approve("body", "1.0.0", by="ops-test", note="test data folder")
    finally:
        registry.close()


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


class RunningNode:
    """``contourd serve`` in a subprocess on free ports, with its data folder."""

    def __init__(self, config_path: Path, data_dir: Path, *extra_args: str) -> None:
        self.config_path = config_path
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.http_port = 0
        self.log_path = config_path.parent / "serve.log"

    def start(self) -> RunningNode:
        import sys

        self._log = open(self.log_path, "a")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daemon",
                "serve",
                "-c",
                str(self.config_path),
                "--port",
                "0",
                "--http-port",
                "0",
                *self.extra_args,
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (self.port and self.http_port):
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"contourd serve exited early; log: {self.log_text()}")
            if line.startswith("contourd listening on port"):
                self.port = int(line.split()[-1])
            elif line.startswith("contourd http on port"):
                self.http_port = int(line.split()[-1])
        return self

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        import json

        beat = json.loads((self.data_dir / "node.heartbeat.json").read_text())
        return list(beat["worker_pids"])

    def stop(self) -> int | None:
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                code = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        elif self.proc is not None:
            code = self.proc.returncode
        self.proc = None
        if hasattr(self, "_log"):
            self._log.close()
        return code


def storescu_push(port: int, files: list[Path], calling_ae: str = "SCANNER") -> None:
    """Push ``files`` to 127.0.0.1:``port`` with DCMTK storescu; raise on failure."""
    binary = require_tool("storescu", "dcmtk")
    result = subprocess.run(
        [binary, "-aet", calling_ae, "-aec", "CONTOURD", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise AssertionError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")


def node_config_file(
    tmp_path: Path,
    tps_port: int,
    *,
    max_attempts: int = 20,
    workers: int = 1,
    outputs: tuple[str, ...] = ("rtstruct",),
    database: str | None = None,
) -> Path:
    """A config for an end-to-end node: CT -> body model -> ``outputs`` -> storescp 'tps'."""
    import yaml

    path = tmp_path / "contourd.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                **({"database": database} if database else {}),
                "node": {"data_dir": "data", "fsync": False, "min_free_disk_mb": 0},
                "series": {"complete_on": "association_release", "complete_after_s": 30},
                "destinations": {"tps": {"ae_title": "TPS", "host": "127.0.0.1", "port": tps_port}},
                "dispatch": {
                    "max_attempts": max_attempts,
                    "retry_initial_s": 0.5,
                    "retry_max_s": 1.0,
                    "poll_interval_s": 0.2,
                    "connect_timeout_s": 2,
                },
                "worker": {"processes": workers, "lease_s": 3.0, "poll_interval_s": 0.1},
                "retention": {"emergency_free_disk_mb": 0},
                "http": {"host": "127.0.0.1", "port": 0},
                "rules": [
                    {
                        "name": "ct-body",
                        "match": {"modality": "CT"},
                        "model": "body",
                        "send_to": ["tps"],
                        "outputs": list(outputs),
                    }
                ],
            }
        )
    )
    return path


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
