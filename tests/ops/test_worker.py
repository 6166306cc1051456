"""The worker: route, run the approved body model, write RTSTRUCT + preview, send."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from conftest import FakeCompletion, body_rule_config, referenced_uids, submit_phantom
from node_harness import approve_body_model

from daemon.job_queue import JobState, SqliteJobQueue, stage_durations_s
from daemon.series_intake import submit_completion
from daemon.worker import Worker
from inference.outputs import PREVIEW_FILENAME, rtstruct_name
from inference.phantom import make_phantom_series


def test_worker_writes_an_rtstruct_that_references_the_series_and_sends_it(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config = body_rule_config(data, {"share": {"folder": str(tmp_path / "share")}})
    approve_body_model(data)
    queue = SqliteJobQueue(data)
    job_id, headers = submit_phantom(tmp_path, queue)
    assert Worker(lambda: config, queue, worker_id="w1").run(once=True) == 1
    job = queue.get(job_id)
    assert job.state == JobState.SENT, job.error
    assert job.rule == "ct-body" and job.models == ["body 1.0.0"]
    assert job.preview_file is not None and job.preview_file.stat().st_size > 1000
    assert {"processing", "total"} <= set(stage_durations_s(queue.events(job_id)))
    [sent] = list((tmp_path / "share").glob("*.dcm"))
    rs = pydicom.dcmread(sent)
    assert rs.Modality == "RTSTRUCT"
    assert [r.ROIName for r in rs.StructureSetROISequence] == ["BODY"]
    assert referenced_uids(rs) == {h.SOPInstanceUID for h in headers}


def test_series_no_rule_matches_is_not_routed_with_the_reason(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = body_rule_config(data, {"share": {"folder": str(tmp_path / "share")}})
    config.rules[0] = config.rules[0].model_copy(
        update={"match": type(config.rules[0].match).model_validate({"modality": "MR"})}
    )
    queue = SqliteJobQueue(data)
    job_id, _ = submit_phantom(tmp_path, queue)
    Worker(lambda: config, queue).run(once=True)
    job = queue.get(job_id)
    assert job.state == JobState.NOT_ROUTED
    assert "no rule matched" in (queue.events(job_id)[-1].message or "")


def test_unapproved_model_fails_the_job_naming_the_approve_command(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = body_rule_config(data, {"share": {"folder": str(tmp_path / "share")}})
    queue = SqliteJobQueue(data)
    job_id, _ = submit_phantom(tmp_path, queue)
    Worker(lambda: config, queue).run(once=True)
    job = queue.get(job_id)
    assert job.state == JobState.FAILED
    assert "contourd models approve body" in (job.error or "")
    assert "ct-body" in (job.error or "")


def test_shadow_rule_records_the_result_and_sends_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = body_rule_config(data, {"share": {"folder": str(tmp_path / "share")}}, shadow=True)
    approve_body_model(data)
    queue = SqliteJobQueue(data)
    job_id, _ = submit_phantom(tmp_path, queue)
    Worker(lambda: config, queue).run(once=True)
    job = queue.get(job_id)
    assert job.state == JobState.SHADOW and job.result_files
    assert not (tmp_path / "share").exists()


def test_rule_outside_its_schedule_window_queues_the_job(tmp_path: Path) -> None:
    data = tmp_path / "data"
    now = time.localtime()
    start = f"{(now.tm_hour + 2) % 24:02d}:00"
    end = f"{(now.tm_hour + 3) % 24:02d}:00"
    config = body_rule_config(
        data,
        {"share": {"folder": str(tmp_path / "share")}},
        schedule={"start": start, "end": end},
    )
    approve_body_model(data)
    queue = SqliteJobQueue(data)
    job_id, _ = submit_phantom(tmp_path, queue)
    Worker(lambda: config, queue).run(once=True)
    job = queue.get(job_id)
    assert job.state == JobState.SCHEDULED
    assert job.not_before is not None and job.not_before > time.time() + 3600
    assert queue.claim("other", 60) is None


def test_shadow_rule_with_continue_does_not_stop_the_clinical_rule(tmp_path: Path) -> None:
    """The example config's pattern: a shadow rule first (continue: true), then the real one."""
    from daemon.config import ContourdConfig

    data = tmp_path / "data"
    base = body_rule_config(data, {"share": {"folder": str(tmp_path / "share")}})
    raw = base.model_dump(mode="json", exclude_defaults=True)
    raw["rules"] = [
        {
            "name": "try-out",
            "match": {"modality": "CT"},
            "model": "body",
            "shadow": True,
            "continue": True,
        },
        {"name": "clinical", "match": {"modality": "CT"}, "model": "body", "send_to": ["share"]},
        {"name": "never", "match": {"modality": "CT"}, "model": "body", "send_to": ["share"]},
    ]
    config = ContourdConfig.model_validate(raw)
    approve_body_model(data)
    queue = SqliteJobQueue(data)
    job_id, headers = submit_phantom(tmp_path, queue)
    worker = Worker(lambda: config, queue, worker_id="w1")
    # One pass drains the queue: the shadow job, then the sibling job it spawned;
    # 'never' comes after the first matching rule without continue, so it gets none.
    assert worker.run(once=True) == 2
    assert worker.run(once=True) == 0
    jobs = {j.rule: j for j in queue.recent(10)}
    assert set(jobs) == {"try-out", "clinical"}
    assert jobs["try-out"].id == job_id and jobs["try-out"].state == JobState.SHADOW
    assert jobs["clinical"].state == JobState.SENT, jobs["clinical"].error
    assert jobs["clinical"].series_uid == headers[0].SeriesInstanceUID
    [sent] = list((tmp_path / "share").glob("*.dcm"))
    assert pydicom.dcmread(sent).Modality == "RTSTRUCT"


@dataclass
class _Completion(FakeCompletion):
    """What ``submit_completion`` reads of a ``SeriesCompletion`` besides the queue's fields."""

    incomplete: str | None = None
    same_content_as: list[int] = field(default_factory=list)
    change: str | None = None


def test_the_worker_routes_on_the_attributes_recorded_when_the_series_completed(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config = body_rule_config(
        data,
        {"share": {"folder": str(tmp_path / "share")}},
        match={"modality": "CT", "series_description": "phantom"},
    )
    approve_body_model(data)
    queue = SqliteJobQueue(data)
    series = make_phantom_series(tmp_path / "series", shape_zyx=(8, 64, 64))
    ds = series.headers[0]
    completion = _Completion(
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        spool_dir=series.directory,
        instance_paths=list(series.paths),
        num_instances=len(series.paths),
        calling_ae="SCANNER ",
    )
    job_id = submit_completion(queue, completion, config.rules)
    record = queue.get(job_id).series_attributes
    assert record is not None
    assert (record["modality"], record["num_images"], record["calling_ae"]) == ("CT", 8, "SCANNER")
    assert record["series_description"] == "contourd phantom CT"
    assert not {"patient_name", "patient_id", "patient_birth_date"} & set(record)
    # The spooled headers change afterwards: routing must not read them again.
    for path in series.paths:
        header = pydicom.dcmread(path)
        header.SeriesDescription = "edited later"
        header.save_as(path)
    assert Worker(lambda: config, queue, worker_id="w1").run(once=True) == 1
    job = queue.get(job_id)
    assert job.state == JobState.SENT, job.error
    assert job.series_description == "contourd phantom CT"
    [rs_file] = job.result_files  # the name inference.outputs gives, as `contourd segment` does
    assert rs_file.name == rtstruct_name(pydicom.dcmread(rs_file).SOPInstanceUID)
    assert job.preview_file is not None and job.preview_file.name == PREVIEW_FILENAME
