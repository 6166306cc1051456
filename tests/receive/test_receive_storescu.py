"""Pushes with DCMTK storescu into the node: storage, series split, completion triggers."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from receive_helpers import (
    echoscu,
    make_ct_series,
    pixel_bytes,
    require_shared,
    sop_uid_of,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.interop


def _stored_path(node, path: Path) -> Path:
    ds = dcmread(path, stop_before_pixels=True)
    return node.spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def test_echo_is_answered(start_node):
    node, _ = start_node()
    result = echoscu(node.port)
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stderr + result.stdout


def test_storescu_push_is_on_disk_with_identical_pixel_data_and_completes_once(
    start_node, tmp_path
):
    node, completions = start_node(series={"complete_after_s": 1.0})
    files = make_ct_series(tmp_path / "in", 12)
    result = storescu(node.port, files)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Received Store Response (Success)") == 12

    for path in files:
        stored = _stored_path(node, path)
        assert stored.is_file(), f"{path.name} was acknowledged but is not at {stored}"
        assert pixel_bytes(stored) == pixel_bytes(path)
        assert dcmread(stored).file_meta.SourceApplicationEntityTitle == "SCANNER"

    series_uid = str(dcmread(files[0]).SeriesInstanceUID)
    done = wait_for(lambda: completions.for_series(series_uid), 10, "series completion")
    completion = done[0]
    assert completion.reason == "quiet_period"
    assert completion.version == 1
    assert completion.num_instances == 12
    assert sorted(completion.instance_paths) == sorted(_stored_path(node, p) for p in files)
    assert (completion.calling_ae, completion.called_ae) == ("SCANNER", "CONTOURD")
    assert completion.modality == "CT"
    # Wait two more quiet periods: no second completion may follow.
    wait_for(lambda: node.db.series_rows(series_uid)[0]["handed_off"] == 1, 5, "handed_off flag")
    with pytest.raises(AssertionError):
        wait_for(lambda: len(completions.for_series(series_uid)) > 1, 2.0, "no duplicate")
    assert [r["version"] for r in node.db.series_rows(series_uid)] == [1]


def test_one_association_with_three_series_is_split_into_three_completions(start_node, tmp_path):
    node, completions = start_node(series={"complete_after_s": 1.0})
    study_uid = "1.2.826.0.1.3680043.8.498.77"
    series = [
        make_ct_series(tmp_path / f"s{i}", n, study_uid=study_uid, seed=i)
        for i, n in enumerate((4, 6, 3))
    ]
    # Interleave the series in one association, as some PACS do.
    pushed = [p for group in zip(*[s[:3] for s in series], strict=True) for p in group]
    pushed += series[0][3:] + series[1][3:]
    result = storescu(node.port, pushed)
    assert result.returncode == 0, result.stderr

    wait_for(lambda: len(completions.items) >= 3, 10, "three completions")
    by_series = {c.series_uid: c for c in completions.items}
    assert len(completions.items) == 3
    for files in series:
        series_uid = str(dcmread(files[0]).SeriesInstanceUID)
        completion = by_series[series_uid]
        assert completion.num_instances == len(files)
        got = {sop_uid_of(p) for p in completion.instance_paths}
        assert got == {sop_uid_of(p) for p in files}
        assert completion.spool_dir == node.spool.series_dir(study_uid, series_uid)


def test_series_completes_on_association_release_when_configured(start_node, tmp_path):
    node, completions = start_node(
        series={"complete_after_s": 300.0, "complete_on": "association_release"}
    )
    files = make_ct_series(tmp_path / "in", 3)
    assert storescu(node.port, files).returncode == 0
    done = wait_for(lambda: completions.items, 10, "completion at release")
    assert done[0].reason == "association_release"
    assert done[0].num_instances == 3


def test_release_hook_completes_only_the_series_it_selects(start_node, tmp_path):
    node, completions = start_node(
        series={"complete_after_s": 300.0},
        complete_on_release=lambda attributes: attributes.modality == "MR",
    )
    ct = make_ct_series(tmp_path / "ct", 2, modality="CT")
    mr = make_ct_series(tmp_path / "mr", 2, modality="MR", seed=3)
    assert storescu(node.port, ct + mr).returncode == 0
    done = wait_for(lambda: completions.items, 10, "MR completion at release")
    assert [c.modality for c in done] == ["MR"]
    ct_uid = str(dcmread(ct[0]).SeriesInstanceUID)
    assert node.assembler.open_series() == {ct_uid: 1}


def test_expected_count_completes_the_series_without_waiting(start_node, tmp_path):
    node, completions = start_node(
        series={"complete_after_s": 300.0, "expected_count_attribute": "ImagesInAcquisition"}
    )
    files = make_ct_series(tmp_path / "in", 5, extra={"ImagesInAcquisition": 5})
    assert storescu(node.port, files[:4]).returncode == 0
    assert completions.items == []
    assert storescu(node.port, files[4:]).returncode == 0
    done = wait_for(lambda: completions.items, 10, "completion at the expected count")
    assert done[0].reason == "expected_count"
    assert done[0].num_instances == 5


def test_images_after_completion_open_version_two(start_node, tmp_path):
    node, completions = start_node(series={"complete_after_s": 0.5})
    files = make_ct_series(tmp_path / "in", 4)
    assert storescu(node.port, files[:2]).returncode == 0
    wait_for(lambda: len(completions.items) == 1, 10, "version 1")
    assert storescu(node.port, files[2:]).returncode == 0
    wait_for(lambda: len(completions.items) == 2, 10, "version 2")
    first, second = completions.items
    assert (first.version, second.version) == (1, 2)
    assert (first.num_instances, second.num_instances, second.num_received) == (2, 4, 2)
    series_uid = first.series_uid
    assert [r["state"] for r in node.db.series_rows(series_uid)] == ["complete", "complete"]


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("folder_name", "propose"),
    [
        ("compressed_j2k", "-xv"),
        ("compressed_jpeg", "-xs"),
        ("compressed_jpegls", "-xt"),
        ("compressed_rle", "-xr"),
    ],
)
def test_compressed_series_are_stored_undecoded(start_node, folder_name, propose):
    folder = require_shared(
        "dicom", "dicom2nifti-testdata", "tests", "data", "generic", folder_name, "001"
    )
    files = sorted(folder.glob("*.dcm"))
    node, _ = start_node()
    result = storescu(node.port, files, extra_args=[propose])
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Received Store Response (Success)") == len(files)
    for path in files:
        source = dcmread(path)
        stored = _stored_path(node, path)
        assert dcmread(stored).file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
        assert pixel_bytes(stored) == pixel_bytes(path)


def test_study_push_with_secondary_capture_and_sr_succeeds_and_counts_them_ignored(
    start_node, tmp_path
):
    from peer_tools import make_secondary_capture, make_sr_file

    node, completions = start_node(series={"complete_after_s": 0.5})
    ct = make_ct_series(tmp_path / "ct", 6)
    study_uid = str(dcmread(ct[0]).StudyInstanceUID)
    sc = make_secondary_capture(tmp_path / "other" / "sc.dcm", ct[0])
    sr = make_sr_file(tmp_path / "other" / "sr.dcm", study_uid=study_uid)
    # Plain storescu, no --no-halt: it stops at the first refused file, so every file counts.
    result = storescu(node.port, [sc, *ct, sr])
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Received Store Response (Success)") == 8
    series_uid = str(dcmread(ct[0]).SeriesInstanceUID)
    [done] = wait_for(lambda: completions.for_series(series_uid), 10, "CT completion")
    assert done.num_instances == 6
    assert [c.series_uid for c in completions.items] == [series_uid]
    assert sorted(p.stem for p in node.spool.root.rglob("*.dcm")) == sorted(
        sop_uid_of(p) for p in ct
    )
    assert node.db.ignored_counts() == {
        "1.2.840.10008.5.1.4.1.1.7": 1,  # Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.88.33": 1,  # Comprehensive SR Storage
    }
