"""Helpers every test area shares: waiting, free ports, Debian tools, ../shared data.

``tests/conftest.py`` puts this folder on ``sys.path`` (pytest's default
"prepend" import mode), so test modules and area helpers import it as
``peer_tools``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: ../shared/data next to the repository (absent in a user's checkout and in a clone elsewhere).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def wait_for(condition: Callable[[], object], timeout_s: float, message: str) -> object:
    """Poll ``condition`` until it returns something truthy.

    Raises ``AssertionError`` after ``timeout_s`` seconds (tests that check
    that something does NOT happen expect exactly that).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {message}")
        time.sleep(0.02)


def free_port() -> int:
    """A TCP port on loopback that the OS says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tool(name: str, package: str) -> str:
    """Path of a Debian tool; skip when it is missing, fail under ``CI=true``."""
    path = shutil.which(name)
    if path is None:
        reason = f"needs {name}: apt-get install {package}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def require_shared(*parts: str) -> Path:
    """A path under ../shared/data; skip with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{'/'.join(parts)} (shared test data not present)")
    return path


def push_and_act_after(
    port: int,
    files: Sequence[Path],
    acks: int,
    action: Callable[[subprocess.Popen[str]], object],
) -> tuple[subprocess.Popen[str], list[str]]:
    """Push ``files`` with verbose DCMTK storescu; call ``action(push)`` after ``acks`` successes.

    The action runs once, while storescu keeps sending (kill storescu, kill the
    node, ...). Returns the finished storescu process and the lines it logged.
    Fails the test when the push ended before the action ran.
    """
    binary = require_tool("storescu", "dcmtk")
    push = subprocess.Popen(
        [binary, "-v", "-aet", "SCANNER", "-aec", "CONTOURD", "127.0.0.1", str(port)]
        + [str(p) for p in files],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, TCP_NODELAY="1"),
    )
    lines: list[str] = []
    acted = threading.Event()

    def read_and_act() -> None:
        assert push.stderr is not None
        seen = 0
        for line in push.stderr:
            lines.append(line)
            seen += "Received Store Response (Success)" in line
            if seen >= acks and not acted.is_set():
                action(push)
                acted.set()

    reader = threading.Thread(target=read_and_act)
    reader.start()
    push.wait(timeout=120)
    reader.join(timeout=30)
    assert acted.is_set(), "storescu finished before the action ran; send more files:\n" + "".join(
        lines
    )
    return push, lines


def acknowledged(lines: Sequence[str]) -> int:
    """Instances a verbose storescu log says were stored successfully."""
    return sum("Received Store Response (Success)" in line for line in lines)


def push_and_kill_after(port: int, files: Sequence[Path], acks: int) -> int:
    """Push ``files`` with DCMTK storescu and SIGKILL it after ``acks`` successes.

    The connection drops without an A-RELEASE or A-ABORT (what a scanner that
    crashes or loses its network does). Returns the acknowledgements storescu
    logged before it died (``acks`` or a few more: it keeps sending while the
    kill is on its way).
    """
    push, lines = push_and_act_after(port, files, acks, lambda p: p.send_signal(signal.SIGKILL))
    assert push.returncode == -signal.SIGKILL
    return acknowledged(lines)


def make_sr_file(path: Path, *, study_uid: str) -> Path:
    """A small Comprehensive SR document (a dose report stand-in) for study pushes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ComprehensiveSRStorage
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_secondary_capture(path: Path, template: Path) -> Path:
    """A Secondary Capture image (an exam summary stand-in) made from ``template``.

    Same study as the template image, its own series and SOP Instance UID.
    """
    from pydicom import dcmread
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    ds = dcmread(template)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_add_images(
    sources: Sequence[Path], out_dir: Path, *, offset_mm: float = 2.0
) -> list[Path]:
    """Copies of ``sources`` as a vendor's extra ``ORIGINAL\\PRIMARY\\AXIAL\\ADD`` stack.

    Same series, new SOP Instance UIDs, Instance Numbers from 100, each moved
    ``offset_mm`` along z: what a GE head series holds besides its axial stack.
    """
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for k, source in enumerate(sources):
        ds = dcmread(source)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "ADD"]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = 100 + k
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + offset_mm]
        target = out_dir / f"ADD{k}.dcm"
        ds.save_as(target)
        made.append(target)
    return made
