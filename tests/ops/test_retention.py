"""Retention: images go after their jobs finish; emergency purge spares unsent results."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import FakeCompletion

from daemon.config import RetentionConfig
from daemon.job_queue import JobState, SqliteJobQueue
from daemon.retention import Retention


def _series(tmp_path: Path, queue: SqliteJobQueue, n: int, final: JobState) -> tuple[int, Path]:
    folder = tmp_path / "data" / "spool" / "1.2.9" / f"1.2.9.{n}"
    folder.mkdir(parents=True)
    paths = []
    for i in range(3):
        path = folder / f"1.2.9.{n}.{i}.dcm"
        path.write_bytes(b"x" * 1000)
        paths.append(path)
    job_id = queue.submit_series(
        FakeCompletion(series_uid=f"1.2.9.{n}", spool_dir=folder, instance_paths=paths)
    )
    queue.claim("w", lease_s=60)
    if final == JobState.NOT_ROUTED:
        queue.transition(job_id, final, worker_id="w", message="no rule matched")
        return job_id, folder
    queue.transition(job_id, JobState.ROUTED, worker_id="w")
    queue.transition(job_id, JobState.RUNNING, worker_id="w")
    if final == JobState.FAILED:
        queue.transition(job_id, final, worker_id="w", message="boom")
        return job_id, folder
    results = tmp_path / "data" / "results" / str(job_id)
    results.mkdir(parents=True)
    (results / "rtstruct.dcm").write_bytes(b"r")
    queue.add_deliveries(job_id, ["tps"])
    queue.transition(
        job_id,
        JobState.WRITTEN,
        worker_id="w",
        release_lease=True,
        result_files=[results / "rtstruct.dcm"],
    )
    if final == JobState.SENT:
        queue.claim_delivery("d", 60)
        queue.finish_delivery(job_id, "tps", "d", ok=True)
    return job_id, folder


def test_images_are_deleted_only_after_the_retention_time(tmp_path: Path) -> None:
    queue = SqliteJobQueue(tmp_path / "data")
    job_id, folder = _series(tmp_path, queue, 1, JobState.SENT)
    retention = Retention(queue, RetentionConfig(delete_images_after_h=1.0))
    assert retention.run_once().series_purged == []
    assert len(list(folder.iterdir())) == 3
    report = retention.run_once(now=time.time() + 3601)
    assert report.series_purged == ["1.2.9.1"] and report.files_deleted == 3
    assert not folder.exists()
    job = queue.get(job_id)
    assert job.images_deleted_at is not None and job.state == JobState.SENT
    assert [e.state for e in queue.events(job_id)][0] == "complete"


def test_images_of_a_series_with_an_open_job_are_kept(tmp_path: Path) -> None:
    queue = SqliteJobQueue(tmp_path / "data")
    _job, folder = _series(tmp_path, queue, 1, JobState.WRITTEN)
    for state in (JobState.NOT_ROUTED, JobState.FAILED):
        _series(tmp_path, queue, 2 if state == JobState.NOT_ROUTED else 3, state)
    report = Retention(queue, RetentionConfig(delete_images_after_h=0)).run_once()
    assert sorted(report.series_purged) == ["1.2.9.2", "1.2.9.3"]
    assert len(list(folder.iterdir())) == 3


def test_emergency_purge_deletes_oldest_finished_first_and_spares_unsent(tmp_path: Path) -> None:
    queue = SqliteJobQueue(tmp_path / "data")
    newer_id, newer_folder = _series(tmp_path, queue, 1, JobState.SENT)
    older_id, _older_folder = _series(tmp_path, queue, 2, JobState.SENT)
    # Finish times set, not slept for: series 2 finished an hour before series 1,
    # so "oldest first" and "lowest UID first" disagree.
    queue.update_fields(newer_id, finished_at=time.time() - 3600)
    queue.update_fields(older_id, finished_at=time.time() - 7200)
    unsent_id, unsent_folder = _series(tmp_path, queue, 3, JobState.WRITTEN)
    free = {"mb": 10.0}

    def fake_free() -> float:
        # Each purged series "frees" 50 MiB; the floor is 55.
        return free["mb"]

    retention = Retention(
        queue,
        RetentionConfig(delete_images_after_h=1000, emergency_free_disk_mb=55),
        free_disk_mb=fake_free,
    )
    original = retention._purge_series

    def purge_and_free(series_uid: str, jobs: list) -> int:
        free["mb"] += 50
        return original(series_uid, jobs)

    retention._purge_series = purge_and_free  # type: ignore[method-assign]
    report = retention.run_once()
    assert report.emergency
    assert report.series_purged == ["1.2.9.2"]  # the oldest; then the floor was cleared
    assert newer_folder.is_dir()
    assert unsent_folder.is_dir() and len(list(unsent_folder.iterdir())) == 3
    assert (tmp_path / "data" / "results" / str(unsent_id) / "rtstruct.dcm").is_file()


def test_emergency_purge_deletes_sent_results_but_never_unsent_ones(tmp_path: Path) -> None:
    queue = SqliteJobQueue(tmp_path / "data")
    sent_id, _ = _series(tmp_path, queue, 1, JobState.SENT)
    unsent_id, _ = _series(tmp_path, queue, 2, JobState.WRITTEN)
    retention = Retention(
        queue,
        RetentionConfig(delete_images_after_h=1000, emergency_free_disk_mb=55),
        free_disk_mb=lambda: 1.0,  # never enough: everything purgeable goes
    )
    report = retention.run_once()
    assert report.result_folders_deleted == [sent_id]
    assert (tmp_path / "data" / "results" / str(unsent_id) / "rtstruct.dcm").is_file()
