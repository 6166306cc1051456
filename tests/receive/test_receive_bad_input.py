"""Bad input gets the right DICOM status or rejection, a clear log line, and the
node keeps serving."""

from __future__ import annotations

import logging

import pytest
from pydicom import dcmread
from pydicom.uid import SecondaryCaptureImageStorage
from pynetdicom import AE, _config
from receive_helpers import echoscu, make_ct_series, storescu

pytestmark = pytest.mark.interop


def _assert_still_serving(node, tmp_path, name="after"):
    files = make_ct_series(tmp_path / name, 1, seed=99)
    result = storescu(node.port, files)
    assert result.returncode == 0, result.stderr
    ds = dcmread(files[0])
    stored = node.spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert stored.is_file()


def _spool_files(node):
    return [p for p in node.spool.root.rglob("*") if p.is_file()]


def test_invalid_series_uid_is_refused_and_never_used_as_a_path(start_node, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    node, _ = start_node()
    files = make_ct_series(tmp_path / "in", 1, extra={"SeriesInstanceUID": "../../../evil"})
    result = storescu(node.port, files)
    assert "Received Store Response (Error: CannotUnderstand)" in result.stderr, result.stderr
    assert _spool_files(node) == []
    assert not (node.spool.root.parent.parent / "evil").exists()
    line = next(r.getMessage() for r in caplog.records if "0xC001" in r.getMessage())
    assert "SeriesInstanceUID '../../../evil' is not a valid DICOM UID" in line
    assert "SCANNER@127.0.0.1" in line
    _assert_still_serving(node, tmp_path)


def test_invalid_sop_instance_uid_in_the_request_is_refused(start_node, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    node, _ = start_node()
    files = make_ct_series(tmp_path / "in", 1)
    ds = dcmread(files[0])
    ds.SOPInstanceUID = "1.2.3.04x"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.04x"
    ds.save_as(files[0])
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CONTOURD")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xC001
    assert "not a valid DICOM UID" in str(status.ErrorComment)
    assert _spool_files(node) == []
    assert any("1.2.3.04x" in r.getMessage() and "0xC001" in r.getMessage() for r in caplog.records)
    _assert_still_serving(node, tmp_path)


def test_truncated_dataset_is_refused_with_cannot_understand(
    start_node, tmp_path, caplog, monkeypatch
):
    caplog.set_level(logging.INFO)
    # The sending AE streams the file's bytes as they are instead of re-encoding them.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    node, _ = start_node()
    files = make_ct_series(tmp_path / "in", 1)
    raw = files[0].read_bytes()
    files[0].write_bytes(raw[: len(raw) - 1000])  # pixel data cut short
    ds = dcmread(files[0], stop_before_pixels=True)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CONTOURD")
    assert assoc.is_established
    status = assoc.send_c_store(files[0])
    assoc.release()
    assert status.Status == 0xC000
    assert _spool_files(node) == []
    line = next(r.getMessage() for r in caplog.records if "0xC000" in r.getMessage())
    assert "(7FE0,0010)" in line and "truncated" in line
    _assert_still_serving(node, tmp_path)


def test_contourable_only_refuses_other_classes_in_negotiation_and_logs_them(
    start_node, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    node, _ = start_node(node={"accept_sop_classes": "contourable"})
    secondary = make_ct_series(
        tmp_path / "sc", 1, extra={"SOPClassUID": SecondaryCaptureImageStorage}
    )
    ds = dcmread(secondary[0])
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.save_as(secondary[0])
    ct = make_ct_series(tmp_path / "ct", 1, seed=5)
    result = storescu(node.port, secondary + ct, extra_args=["-R", "--no-halt"])
    # storescu reports the file it could not send; the CT in the same association is stored.
    assert "No presentation context for: (SC)" in result.stderr, result.stderr
    assert result.stderr.count("Received Store Response (Success)") == 1
    assert any(
        "refused SOP classes" in r.getMessage() and SecondaryCaptureImageStorage in r.getMessage()
        for r in caplog.records
    )
    assert len(_spool_files(node)) == 1
    _assert_still_serving(node, tmp_path)


def test_calling_ae_title_not_in_allow_list_is_rejected(start_node, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    node, _ = start_node(node={"allowed_callers": ["CTSIM", "PACS@127.0.0.1"]})
    result = echoscu(node.port, calling_ae="INTRUDER")
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr, result.stderr
    assert "Calling AE Title Not Recognized" in result.stderr
    assert any(
        "'INTRUDER' is not in node.allowed_callers" in r.getMessage() for r in caplog.records
    )
    assert echoscu(node.port, calling_ae="CTSIM").returncode == 0
    assert echoscu(node.port, calling_ae="PACS").returncode == 0


def test_allowed_ae_title_from_another_address_is_rejected(start_node, caplog):
    caplog.set_level(logging.INFO)
    node, _ = start_node(node={"allowed_callers": ["CTSIM@10.20.30.40"]})
    result = echoscu(node.port, calling_ae="CTSIM")
    assert "Association Rejected" in result.stderr, result.stderr
    assert any("not 127.0.0.1" in r.getMessage() for r in caplog.records)


def test_wrong_called_ae_title_is_rejected(start_node, caplog):
    caplog.set_level(logging.INFO)
    node, _ = start_node()
    result = echoscu(node.port, called_ae="SOMEONE_ELSE")
    assert "Association Rejected" in result.stderr, result.stderr
    assert "Called AE Title Not Recognized" in result.stderr
    assert any("called AE title 'SOMEONE_ELSE'" in r.getMessage() for r in caplog.records)
    assert echoscu(node.port).returncode == 0


def test_under_the_disk_floor_echo_answers_and_stores_get_out_of_resources(
    start_node, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    node, _ = start_node(node={"min_free_disk_mb": 10**12})
    echo = echoscu(node.port)
    assert echo.returncode == 0, echo.stderr  # the node still answers C-ECHO
    files = make_ct_series(tmp_path / "full", 3, seed=7)
    result = storescu(node.port, files, extra_args=["--no-halt"])
    assert result.stderr.count("Refused: OutOfResources") == 3, result.stderr
    assert _spool_files(node) == []
    refusals = [r for r in caplog.records if "refused with 0xA700" in r.getMessage()]
    assert len(refusals) == 1  # one line per association, not one per image
    assert "under node.min_free_disk_mb" in refusals[0].getMessage()


def test_associations_over_the_maximum_are_rejected(start_node, caplog):
    caplog.set_level(logging.INFO)
    node, _ = start_node(node={"maximum_associations": 1})
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = ae.associate("127.0.0.1", node.port, ae_title="CONTOURD")
    assert held.is_established
    try:
        result = echoscu(node.port)
        assert "Association Rejected" in result.stderr, result.stderr
        assert "Local Limit Exceeded" in result.stderr
    finally:
        held.release()
    assert any("maximum_associations 1" in r.getMessage() for r in caplog.records)
