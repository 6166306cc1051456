"""DICOMweb STOW-RS receive: dicomweb-client stores a CT; the RTSTRUCT reaches a DCMTK TPS."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import requests
from conftest import wait_for
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from node_harness import healthz, node_with_tps

from daemon.job_queue import SqliteJobQueue
from inference.phantom import make_phantom_series

pytestmark = [pytest.mark.interop, pytest.mark.slow]

PASSWORD = "stow test password"


def test_stow_rs_series_is_spooled_segmented_and_sent_to_the_tps(tmp_path: Path) -> None:
    users = {"pacs": "operator", "look": "viewer"}
    with node_with_tps(tmp_path, users=users, password=PASSWORD) as env:
        tps, node, data = env.tps, env.node, env.data_dir
        base = f"http://127.0.0.1:{node.http_port}/dicomweb"
        series = make_phantom_series(tmp_path / "ct", shape_zyx=(10, 48, 48))
        datasets = [pydicom.dcmread(p) for p in series.paths]

        viewer = DICOMwebClient(url=base, session=create_session_from_user_pass("look", PASSWORD))
        with pytest.raises(requests.HTTPError) as refused:
            viewer.store_instances(datasets[:1])
        assert refused.value.response.status_code == 403

        client = DICOMwebClient(url=base, session=create_session_from_user_pass("pacs", PASSWORD))
        answer = client.store_instances(datasets)
        stored = {item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence}
        assert stored == {h.SOPInstanceUID for h in series.headers}
        assert "FailedSOPSequence" not in answer

        # Every instance is on disk in the spool before the answer, as with C-STORE.
        spool = data / "spool" / series.headers[0].StudyInstanceUID
        on_disk = {p.stem for p in spool.rglob("*.dcm")}
        assert on_disk == stored

        [rs] = wait_for(tps.received, 90, f"RTSTRUCT at the TPS; log: {node.log_tail()}")
        assert rs.Modality == "RTSTRUCT"
        assert rs.StudyInstanceUID == series.headers[0].StudyInstanceUID
        [job] = SqliteJobQueue(data).recent()
        assert job.calling_ae == "STOW:pacs" and job.num_instances == 10

        # A part that is not DICOM is refused with a reason; the node keeps serving.
        boundary = "contourd-test"
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + b"not a dicom file"
            + f"\r\n--{boundary}--\r\n".encode()
        )
        bad = requests.post(
            f"{base}/studies",
            data=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
            },
            auth=("pacs", PASSWORD),
            timeout=30,
        )
        assert bad.status_code == 409
        failed = bad.json()["00081198"]["Value"][0]
        assert failed["00081197"]["Value"] == [0xC000]
        assert healthz(node.http_port)[0] == 200


@pytest.mark.parametrize("chunk_bytes", [1, 7, 4096, 10**9])
def test_multipart_body_splits_the_same_in_any_chunking(chunk_bytes: int) -> None:
    from daemon.web.stow import MultipartSplitter, StowBodyError

    payloads = [b"first\r\n--not-the-boundary\r\n", b"", b"\r\n\r\nthird"]
    body = (
        b"preamble\r\n"
        + b"".join(
            b"--b0\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in payloads
        )
        + b"--b0--\r\nepilogue"
    )
    splitter = MultipartSplitter('multipart/related; type="application/dicom"; boundary="b0"')
    parts: list[bytes] = []
    for start in range(0, len(body), chunk_bytes):
        parts.extend(splitter.feed(body[start : start + chunk_bytes]))
    splitter.close()
    assert parts == payloads
    cut = MultipartSplitter("multipart/related; boundary=b0")
    assert cut.feed(body[: body.index(b"--b0--") + len(b"--b0")]) == payloads
    with pytest.raises(StowBodyError, match="closing boundary"):
        cut.close()
    with pytest.raises(StowBodyError, match="expected multipart/related"):
        MultipartSplitter("application/dicom")
