"""Scanner faults end to end: storescu -> contourd serve -> DCMTK storescp (the TPS).

- a push cut short (storescu SIGKILLed after N acknowledgements) is never
  contoured: its job fails as incomplete; the sender's retry is contoured;
- the same series pushed twice gives the TPS exactly one RTSTRUCT; a changed
  series gives a new one that names the one it supersedes;
- a study push with an SR and a Secondary Capture succeeds (storescu exits 0),
  the CT is contoured and the others are counted as ignored;
- a real gantry-tilted CT with a vendor's ADD stack is contoured on its
  primary stack (the rest named in the job's warnings); a slice without pixel
  data fails the job with its name, not "missing slices".
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import wait_for
from node_harness import RunningNode, StoreScp, node_metrics, node_with_tps, storescu_push
from peer_tools import (
    make_add_images,
    make_secondary_capture,
    make_sr_file,
    push_and_kill_after,
    require_shared,
)

from daemon.job_queue import SqliteJobQueue
from inference.phantom import make_phantom_series

pytestmark = [pytest.mark.interop, pytest.mark.slow]


@pytest.fixture
def tps_and_node(tmp_path: Path) -> Iterator[tuple[StoreScp, Callable[..., RunningNode]]]:
    """The TPS, and ``start(series, **rule)``: a node with that ``series:`` and rule."""
    tps = StoreScp(tmp_path / "tps")
    with ExitStack() as running:

        def start(series: dict[str, Any], **rule: object) -> RunningNode:
            env = running.enter_context(node_with_tps(tmp_path, tps=tps, series=series, rule=rule))
            return env.node

        yield tps, start


ON_RELEASE = {"complete_on": "association_release", "complete_after_s": 30}


def _node_and_series(start, tmp_path: Path, slices: int, **rule: object):
    """A node completing on association release, and a phantom CT of ``slices``."""
    node = start(ON_RELEASE, **rule)
    return node, make_phantom_series(tmp_path / "ct", shape_zyx=(slices, 64, 64))


def _referenced(rs: pydicom.Dataset) -> set[str]:
    study = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    images = study.RTReferencedSeriesSequence[0].ContourImageSequence
    return {c.ReferencedSOPInstanceUID for c in images}


def test_push_cut_short_fails_incomplete_without_rtstruct_and_the_retry_is_contoured(
    tmp_path: Path, tps_and_node
) -> None:
    tps, start = tps_and_node
    node = start({"complete_on": "quiet_period", "complete_after_s": 1.0, "incomplete_wait_s": 4.0})
    series = make_phantom_series(tmp_path / "ct", shape_zyx=(48, 64, 64))
    push_and_kill_after(node.port, series.paths, 10)
    queue = SqliteJobQueue(node.data_dir)
    job = wait_for(lambda: queue.recent(1), 60, f"a job; log: {node.log_tail()}")[0]
    assert job.state.value == "failed", job
    on_disk = sorted((node.data_dir / "spool").rglob("*.dcm"))
    assert job.error is not None
    assert job.error.startswith(
        f"incomplete: the sender's association was aborted after {len(on_disk)} images "
        "(signal: association); nothing more arrived within series.incomplete_wait_s = 4 s"
    ), job.error
    assert tps.received() == []

    # The sender retries with the whole series: a new version, whole, contoured once.
    storescu_push(node.port, series.paths)
    [rs] = wait_for(tps.received, 90, f"RTSTRUCT after the retry; log: {node.log_tail()}")
    assert _referenced(rs) == {h.SOPInstanceUID for h in series.headers}
    series_uid = series.headers[0].SeriesInstanceUID

    def versions() -> list[tuple[int, str]]:
        return [(j.version, j.state.value) for j in queue.jobs_for_series(series_uid)]

    wait_for(lambda: versions() == [(1, "failed"), (2, "sent")], 30, f"states {versions()}")


def test_same_series_pushed_twice_gives_one_rtstruct_and_a_change_supersedes_it(
    tmp_path: Path, tps_and_node
) -> None:
    tps, start = tps_and_node
    node, series = _node_and_series(start, tmp_path, 14)
    first_twelve = series.paths[:12]
    storescu_push(node.port, first_twelve)
    [first] = wait_for(tps.received, 90, f"first RTSTRUCT; log: {node.log_tail()}")
    queue = SqliteJobQueue(node.data_dir)
    series_uid = series.headers[0].SeriesInstanceUID

    storescu_push(node.port, first_twelve)  # the PACS re-sends it unchanged
    wait_for(
        lambda: any(e.state == "resent_unchanged" for e in queue.events(queue.recent(1)[0].id)),
        60,
        f"re-push recorded; log: {node.log_tail()}",
    )
    [job] = queue.jobs_for_series(series_uid)
    note = next(e.message for e in queue.events(job.id) if e.state == "resent_unchanged")
    assert note == (
        "series re-sent unchanged as version 2 (12 instances, same content as version 1) "
        "from SCANNER: no new structure set (rule 'ct-body' on_resend: ignore)"
    )
    assert [ds.SOPInstanceUID for ds in tps.received()] == [first.SOPInstanceUID]

    storescu_push(node.port, series.paths)  # two more slices: the series changed
    received = wait_for(
        lambda: len(tps.received()) == 2 and tps.received(), 90, "RTSTRUCT of the changed series"
    )
    [second] = [ds for ds in received if ds.SOPInstanceUID != first.SOPInstanceUID]
    [predecessor] = second.PredecessorStructureSetSequence
    assert predecessor.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert (
        f"Supersedes structure set {first.SOPInstanceUID} (job {job.id}, series version 1): "
        "14 instances, version 1 had 12 (2 new)"
    ) in second.StructureSetDescription
    assert _referenced(second) == {h.SOPInstanceUID for h in series.headers}

    def versions() -> list[tuple[int, str]]:
        return [(j.version, j.state.value) for j in queue.jobs_for_series(series_uid)]

    wait_for(lambda: versions() == [(1, "sent"), (3, "sent")], 30, f"states {versions()}")


def test_rule_on_resend_redeliver_sends_the_same_rtstruct_again(
    tmp_path: Path, tps_and_node
) -> None:
    tps, start = tps_and_node
    node, series = _node_and_series(start, tmp_path, 10, on_resend="redeliver")
    storescu_push(node.port, series.paths)
    [first] = wait_for(tps.received, 90, f"first RTSTRUCT; log: {node.log_tail()}")
    queue = SqliteJobQueue(node.data_dir)
    job = queue.recent(1)[0]
    storescu_push(node.port, series.paths)

    def delivered() -> int:
        return sum(e.state == "delivered" for e in queue.events(job.id))

    wait_for(lambda: delivered() == 2, 60, f"second delivery; log: {node.log_tail()}")
    assert [j.id for j in queue.jobs_for_series(job.series_uid)] == [job.id]
    assert {ds.SOPInstanceUID for ds in tps.received()} == {first.SOPInstanceUID}


def test_study_push_with_sr_and_secondary_capture_succeeds_and_the_ct_is_contoured(
    tmp_path: Path, tps_and_node
) -> None:
    tps, start = tps_and_node
    node, series = _node_and_series(start, tmp_path, 10)
    study_uid = series.headers[0].StudyInstanceUID
    sc = make_secondary_capture(tmp_path / "other" / "sc.dcm", series.paths[0])
    sr = make_sr_file(tmp_path / "other" / "sr.dcm", study_uid=study_uid)
    storescu_push(node.port, [sc, *series.paths, sr])  # raises unless storescu exits 0
    [rs] = wait_for(tps.received, 90, f"RTSTRUCT; log: {node.log_tail()}")
    assert _referenced(rs) == {h.SOPInstanceUID for h in series.headers}
    assert len(SqliteJobQueue(node.data_dir).recent(10)) == 1

    metrics = node_metrics(node.http_port)
    for name in ("Secondary Capture Image Storage", "Comprehensive SR Storage"):
        assert f'contourd_instances_ignored_total{{sop_class="{name}"}} 1.0'.encode() in metrics
    status = subprocess.run(
        [sys.executable, "-m", "daemon", "status", "-c", str(node.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        "ignored:     2 instance(s) of classes not contoured here "
        "(Comprehensive SR Storage 1, Secondary Capture Image Storage 1)"
    ) in status.stdout, status.stdout


TILTED_CT = ("dicom", "dicom2nifti-testdata", "tests", "data", "failing", "gantrytilting", "001")


def test_series_with_an_add_stack_is_contoured_on_its_primary_stack_with_a_warning(
    tmp_path: Path, tps_and_node
) -> None:
    tps, start = tps_and_node
    node, series = _node_and_series(start, tmp_path, 12)
    added = make_add_images(series.paths[3:5], tmp_path / "add", offset_mm=1.0)
    storescu_push(node.port, series.paths + added)
    [rs] = wait_for(tps.received, 90, f"RTSTRUCT; log: {node.log_tail()}")
    assert _referenced(rs) == {h.SOPInstanceUID for h in series.headers}
    job = _finished_job(node)
    [note] = [w for w in job.warnings if "stacks" in w]
    assert note.startswith(
        "the series holds 2 stacks; contoured the primary axial stack of 12 image(s)"
    ), note
    assert note.endswith("set aside 2 image(s) with ImageType ORIGINAL\\PRIMARY\\AXIAL\\ADD")


def _finished_job(node: RunningNode):
    queue = SqliteJobQueue(node.data_dir)
    wait_for(lambda: queue.recent(1) and queue.recent(1)[0].finished, 120, f"{node.log_tail()}")
    return queue.recent(1)[0]


@pytest.mark.shared_data
def test_tilted_ct_with_an_add_stack_is_segmented_on_its_primary_stack(
    tmp_path: Path, tps_and_node
) -> None:
    tps, start = tps_and_node
    primary = sorted(require_shared(*TILTED_CT).glob("*.dcm"))
    added = make_add_images(primary[:2], tmp_path / "add")
    node = start(ON_RELEASE)
    storescu_push(node.port, primary + added)
    job = _finished_job(node)
    # The stacks are split and named; this anonymised excerpt has no Frame of Reference
    # UID, so no RTSTRUCT can be written, and the job says exactly that.
    assert job.state.value == "failed"
    assert job.error is not None and "uneven slice spacing" not in job.error
    assert "4 of the 4 source images have no Frame of Reference UID (0020,0052)" in job.error
    assert tps.received() == []
    log = node.log_text()
    assert "the series holds 2 stacks; contoured the primary axial stack of 4 image(s)" in log
    assert "set aside 2 image(s) with ImageType ORIGINAL\\PRIMARY\\AXIAL\\ADD" in log


@pytest.mark.shared_data
def test_slice_without_pixel_data_fails_the_job_naming_it(tmp_path: Path, tps_and_node) -> None:
    tps, start = tps_and_node
    paths = []
    for source in sorted(require_shared(*TILTED_CT).glob("*.dcm")):
        ds = pydicom.dcmread(source)
        if int(ds.InstanceNumber) == 3:
            del ds.PixelData
        paths.append(tmp_path / source.name)
        ds.save_as(paths[-1])
    node = start(ON_RELEASE)
    storescu_push(node.port, paths)
    job = _finished_job(node)
    assert job.state.value == "failed"
    assert job.error is not None and "missing slices" not in job.error
    assert "1 slice(s) have a header but no Pixel Data (7FE0,0010): " in job.error, job.error
    assert "(instance 3, position [-106.79, -256.62, -51.95] mm)" in job.error
    assert tps.received() == []
