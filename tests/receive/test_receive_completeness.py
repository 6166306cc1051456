"""Completeness: an aborted push is never completed as if it were whole.

DCMTK storescu is SIGKILLed after N acknowledgements (the connection drops
without a release); the series must wait for the rest and, when nothing more
comes, end as incomplete with the number of images that arrived. A retry that
sends the rest completes it. Gaps in the headers hold a series the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from peer_tools import push_and_kill_after
from pydicom import dcmread
from pydicom.dataset import Dataset
from receive_helpers import make_ct_series, storescu, wait_for

from daemon.health_http import series_held
from daemon.series_completeness import SliceFacts, assess

pytestmark = pytest.mark.interop


def _series_uid(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def _on_disk(node, series_uid: str) -> set[str]:
    return {r["sop_instance_uid"] for r in node.db.instance_rows(series_uid)}


def test_killed_storescu_series_ends_incomplete_and_a_later_retry_is_complete(start_node, tmp_path):
    node, completions = start_node(series={"complete_after_s": 0.5, "incomplete_wait_s": 3.0})
    files = make_ct_series(tmp_path / "in", 80)
    series_uid = _series_uid(files)
    acked = push_and_kill_after(node.port, files, 20)
    assert 20 <= acked < len(files)

    [done] = wait_for(lambda: completions.for_series(series_uid), 20, "incomplete completion")
    received = len(_on_disk(node, series_uid))
    assert received >= acked
    assert done.reason == "incomplete"
    assert done.incomplete is not None
    assert f"the sender's association was aborted after {received} images" in done.incomplete
    assert "(signal: association)" in done.incomplete
    assert "incomplete_wait_s = 3 s" in done.incomplete
    row = node.db.series_rows(series_uid)[0]
    assert row["reason"] == "incomplete" and "signal: association" in row["completeness"]

    # The sender retries with what was not acknowledged: version 2, whole, contourable.
    sop_uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
    rest = [p for uid, p in sop_uids.items() if uid not in _on_disk(node, series_uid)]
    assert storescu(node.port, rest).returncode == 0
    done2 = wait_for(lambda: completions.for_series(series_uid)[1:], 20, "retry completion")[0]
    assert (done2.version, done2.reason, done2.incomplete) == (2, "quiet_period", None)
    assert done2.num_instances == len(files)
    assert done2.completeness.startswith("complete (80 instances")


def test_retry_within_the_wait_completes_the_same_version_once(start_node, tmp_path):
    node, completions = start_node(series={"complete_after_s": 0.5, "incomplete_wait_s": 60.0})
    files = make_ct_series(tmp_path / "in", 60)
    series_uid = _series_uid(files)
    push_and_kill_after(node.port, files, 10)
    # Two quiet periods pass: the aborted series is held, not completed.
    with pytest.raises(AssertionError):
        wait_for(lambda: completions.for_series(series_uid), 1.5, "no completion while held")
    [held] = series_held(node.db)
    assert held.startswith(f"series {series_uid} version 1: incomplete: the sender's association")
    assert held.endswith("(signal: association)")
    assert storescu(node.port, files).returncode == 0  # the sender re-sends everything
    [done] = wait_for(lambda: completions.for_series(series_uid), 20, "completion after retry")
    assert (done.version, done.reason, done.num_instances) == (1, "quiet_period", 60)
    assert done.incomplete is None


def test_a_missing_instance_number_holds_the_series_and_names_the_gap(start_node, tmp_path):
    node, completions = start_node(series={"complete_after_s": 0.3, "incomplete_wait_s": 1.5})
    files = make_ct_series(tmp_path / "in", 12)
    series_uid = _series_uid(files)
    sent = files[:5] + files[6:]  # slice 6 (instance number 6) never sent
    assert storescu(node.port, sent).returncode == 0
    [done] = wait_for(lambda: completions.for_series(series_uid), 20, "incomplete completion")
    assert done.reason == "incomplete"
    assert done.incomplete is not None
    assert "instance numbers 1-5, 7-12 arrived; 6 (1 instance) missing" in done.incomplete
    assert "(signal: instance_number)" in done.incomplete


def _facts(number: int | None, z_mm: float, **extra: object) -> SliceFacts:
    ds = Dataset()
    ds.SOPInstanceUID = f"1.2.3.{number or 0}.{round(z_mm * 100)}"
    if number is not None:
        ds.InstanceNumber = number
    ds.ImagePositionPatient = [0.0, 0.0, z_mm]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return SliceFacts.from_header(ds)


def test_position_gap_message_shows_the_jump_and_the_usual_step():
    facts = [_facts(None, z) for z in (0.0, 2.5, 5.0, 12.5, 15.0, 17.5)]
    verdict = assess(facts, interruption=None)
    assert not verdict.complete
    assert verdict.signal == "slice_position"
    assert verdict.detail == (
        "slice positions jump where the usual step is 2.50 mm: from 5.00 to 12.50 mm "
        "(2 slices missing); 2 slices missing in all"
    )


def test_images_in_acquisition_decides_before_contiguous_numbers():
    facts = [_facts(n, n * 2.0, ImagesInAcquisition=10, AcquisitionNumber=1) for n in range(1, 7)]
    verdict = assess(facts, interruption=None)
    assert (verdict.complete, verdict.signal) == (False, "images_in_acquisition")
    assert verdict.detail == (
        "Images in Acquisition (0020,1002) says 10 images, 6 of acquisition 1 arrived (4 missing)"
    )


def test_uneven_but_not_missing_steps_are_not_called_incomplete():
    facts = [_facts(n, z) for n, z in enumerate((0.0, 2.5, 5.0, 8.75, 11.25), start=1)]
    verdict = assess(facts, interruption=None)
    assert verdict.complete and verdict.signal == "none"
    assert verdict.describe().startswith("complete (5 instances; checked instance numbers of 5")


def test_an_extra_stack_numbered_apart_or_interleaved_stacks_are_not_holes():
    axial = [_facts(n, n * 2.0) for n in range(1, 5)]
    add = [
        _facts(n, n * 2.0 + 1.0, ImageType=["ORIGINAL", "PRIMARY", "AXIAL", "ADD"])
        for n in (100, 101)
    ]
    assert assess(axial + add, interruption=None).complete
    odd = [_facts(n, n * 1.0) for n in (1, 3, 5, 7)]
    even = [_facts(n, n * 1.0, ImageType=["DERIVED"]) for n in (2, 4, 6, 8)]
    assert assess(odd + even, interruption=None).complete
    gap_in_a_stack = [_facts(n, n * 2.0) for n in (1, 2, 4, 5)] + add
    verdict = assess(gap_in_a_stack, interruption=None)
    assert (verdict.complete, verdict.signal) == (False, "instance_number")
    assert verdict.detail == "instance numbers 1-2, 4-5, 100-101 arrived; 3 (1 instance) missing"
