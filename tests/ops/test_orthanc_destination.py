"""Orthanc as the planning system / PACS: our C-STORE SCU delivers an RTSTRUCT to it.

Orthanc is a real, independent DICOM server (Debian package ``orthanc``). The
test starts one on free ports with a throwaway storage folder, sends an
RTSTRUCT written by our writer for a phantom CT (and the CT itself, as a PACS
would hold it), and asks Orthanc's REST API what it stored.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from conftest import free_port, running_orthanc

from daemon.config import DestinationConfig, DispatchConfig
from daemon.dispatch import send_cstore
from inference.phantom import make_phantom_series
from inference.roi_mask import AlgorithmInfo
from inference.rtstruct_writer import write_rtstruct

pytestmark = [pytest.mark.interop]


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _post(url: str, body: str) -> object:
    req = urllib.request.Request(url, data=body.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A running Orthanc: (DICOM port, HTTP port)."""
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "contourd-test",
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "DicomCheckCalledAet": True,
        "Plugins": [],
    }
    with running_orthanc(tmp_path, config):
        yield dicom_port, http_port


def test_rtstruct_and_ct_are_stored_by_orthanc(orthanc: tuple[int, int], tmp_path: Path) -> None:
    dicom_port, http_port = orthanc
    phantom = make_phantom_series(tmp_path / "ct", shape_zyx=(12, 64, 64), spacing_mm=(2, 2, 3))
    rs = write_rtstruct(
        phantom.headers,
        phantom.rois[:3],
        AlgorithmInfo("body", "1.0.0", None, "0.1.0"),
        structure_set_label="AUTO TEST",
    )
    rs_path = tmp_path / "RS.dcm"
    rs.save_as(rs_path, enforce_file_format=True)
    dest = DestinationConfig(ae_title="ORTHANC", host="127.0.0.1", port=dicom_port)

    acked = send_cstore([*phantom.paths, rs_path], dest, DispatchConfig(), name="orthanc")

    assert acked[-1] == rs.SOPInstanceUID
    base = f"http://127.0.0.1:{http_port}"
    found = _post(f"{base}/tools/lookup", rs.SOPInstanceUID)
    assert isinstance(found, list) and [f["Type"] for f in found] == ["Instance"]
    tags = _get(f"{base}/instances/{found[0]['ID']}/simplified-tags")
    assert isinstance(tags, dict)
    assert tags["Modality"] == "RTSTRUCT"
    assert tags["StructureSetLabel"] == "AUTO TEST"
    assert tags["SeriesInstanceUID"] != phantom.headers[0].SeriesInstanceUID
    assert tags["StudyInstanceUID"] == phantom.headers[0].StudyInstanceUID
    # Orthanc filed the RTSTRUCT in the CT's study, beside the CT series.
    study = _get(f"{base}/instances/{found[0]['ID']}/study")
    assert isinstance(study, dict) and len(study["Series"]) == 2
    with urllib.request.urlopen(f"{base}/instances/{found[0]['ID']}/file", timeout=5) as r:
        stored = pydicom.dcmread(io.BytesIO(r.read()))
    assert [r.ROIName for r in stored.StructureSetROISequence] == [r.name for r in phantom.rois[:3]]


def test_wrong_called_ae_title_is_refused_with_a_clear_error(
    orthanc: tuple[int, int], tmp_path: Path
) -> None:
    from contourd.errors import DispatchError

    dicom_port, _ = orthanc
    phantom = make_phantom_series(tmp_path / "ct", shape_zyx=(4, 32, 32), spacing_mm=(2, 2, 3))
    dest = DestinationConfig(ae_title="NOT_ORTHANC", host="127.0.0.1", port=dicom_port)
    with pytest.raises(DispatchError, match="NOT_ORTHANC"):
        send_cstore(phantom.paths[:1], dest, DispatchConfig(), name="orthanc")
