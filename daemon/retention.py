"""Deleting received images once nothing needs them any more.

Rules (``retention:`` in the config):

- The images of a series are deleted ``delete_images_after_h`` hours after
  the last of its jobs (every version) finished: ``sent``, ``failed`` (beyond
  its retries), ``not_routed`` or ``shadow``. A series with any job still
  open (complete, routed, scheduled, running, written, sending) keeps them,
  and so does a series whose reviewed structure set was kept for training
  (``keep_series``; see :mod:`daemon.feedback_dataset`).
- Only the files the jobs name are deleted, then folders left empty; an
  image that arrived after the last job was created (the start of a new
  version) is never touched.
- Job rows, events and audit rows stay (they hold UIDs, not images); the
  job gets ``images_deleted_at``.
- Emergency purge: when free space on the data folder's disk is below
  ``emergency_free_disk_mb``, finished series are purged at once, the
  oldest finish first, until the floor is cleared; then result folders of
  jobs that were sent (or never had anything to send). Results that have not
  reached every destination are never deleted.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from contourd.data_folder import DataFolder
from daemon.config import RetentionConfig
from daemon.config_provider import provided
from daemon.job_queue import FINISHED_STATES, Job, JobState, SqliteJobQueue

log = logging.getLogger(__name__)


def disk_free_mb(path: Path) -> float:
    """Free space, in MiB, on the file system holding ``path``."""
    return shutil.disk_usage(path).free / 2**20


@dataclass
class RetentionReport:
    """What one retention pass did."""

    series_purged: list[str] = field(default_factory=list)
    files_deleted: int = 0
    result_folders_deleted: list[int] = field(default_factory=list)
    emergency: bool = False
    free_mb_before: float = 0.0
    free_mb_after: float = 0.0


class Retention:
    """Applies the retention rules to one data folder.

    Parameters
    ----------
    queue
        The job queue of the data folder.
    config
        Retention settings, or a provider of them called at each pass
        (:mod:`daemon.config_provider`).
    free_disk_mb
        Returns free space in MiB; defaults to the data folder's file system
        (tests pass their own to simulate a full disk).
    """

    def __init__(
        self,
        queue: SqliteJobQueue,
        config: RetentionConfig | Callable[[], RetentionConfig],
        *,
        free_disk_mb: Callable[[], float] | None = None,
        keep_series: Callable[[], set[str]] | None = None,
    ) -> None:
        self.queue = queue
        self._config = provided(config)
        self.free_disk_mb = free_disk_mb or (lambda: disk_free_mb(queue.data_dir))
        self.keep_series = keep_series or set

    @property
    def config(self) -> RetentionConfig:
        """The retention settings in use now (asked of the provider)."""
        return self._config()

    def _series_groups(self) -> list[tuple[float, str, list[Job]]]:
        """(finish time of last job, series UID, jobs) for purgeable series, oldest first."""
        candidates = {j.series_uid for j in self.queue.finished_jobs_with_images(limit=100_000)}
        candidates -= self.keep_series()  # reviewed cases kept for training
        groups: list[tuple[float, str, list[Job]]] = []
        for series_uid in candidates:
            jobs = self.queue.jobs_for_series(series_uid)
            if not all(j.state in FINISHED_STATES for j in jobs):
                continue
            finished = max(j.finished_at or j.updated_at for j in jobs)
            groups.append((finished, series_uid, jobs))
        groups.sort()
        return groups

    def _purge_series(self, series_uid: str, jobs: list[Job]) -> int:
        """Delete the images the jobs name; returns the number of files deleted."""
        newest_job_created = max(j.created_at for j in jobs)
        deleted = 0
        folders: set[Path] = set()
        for path in {p for j in jobs for p in j.instance_paths}:
            try:
                if path.stat().st_mtime > newest_job_created + 1.0:
                    continue  # rewritten after the last job: belongs to a newer version
                path.unlink()
                deleted += 1
            except FileNotFoundError:
                pass
            folders.add(path.parent)
        folders.update(j.spool_dir for j in jobs if str(j.spool_dir) not in ("", "."))
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            for candidate in (folder, folder.parent):
                with contextlib.suppress(OSError):
                    candidate.rmdir()  # only when empty
        now = time.time()
        for job in jobs:
            if job.images_deleted_at is None:
                self.queue.update_fields(job.id, images_deleted_at=now)
        log.info("retention: deleted %d image file(s) of series %s", deleted, series_uid)
        return deleted

    def run_once(self, now: float | None = None) -> RetentionReport:
        """One pass: age-based deletion, then the emergency purge if needed."""
        now = time.time() if now is None else now
        config = self.config  # one pass, one config
        report = RetentionReport(free_mb_before=self.free_disk_mb())
        max_age_s = config.delete_images_after_h * 3600.0
        groups = self._series_groups()
        remaining = []
        for finished_at, series_uid, jobs in groups:
            if now - finished_at >= max_age_s:
                report.files_deleted += self._purge_series(series_uid, jobs)
                report.series_purged.append(series_uid)
            else:
                remaining.append((finished_at, series_uid, jobs))
        floor_mb = config.emergency_free_disk_mb
        if self.free_disk_mb() < floor_mb:
            report.emergency = True
            log.warning(
                "retention: free disk %.0f MiB is below the floor of %d MiB; purging "
                "finished series oldest first",
                self.free_disk_mb(),
                floor_mb,
            )
            for _finished_at, series_uid, jobs in remaining:
                if self.free_disk_mb() >= floor_mb:
                    break
                report.files_deleted += self._purge_series(series_uid, jobs)
                report.series_purged.append(series_uid)
            if self.free_disk_mb() < floor_mb:
                self._purge_sent_results(report, floor_mb)
        report.free_mb_after = self.free_disk_mb()
        return report

    def _purge_sent_results(self, report: RetentionReport, floor_mb: float) -> None:
        """Emergency only: delete result folders of delivered jobs, oldest first."""
        jobs = [
            j
            for j in self.queue.recent(limit=100_000)
            if j.state in (JobState.SENT, JobState.NOT_ROUTED, JobState.SHADOW)
        ]
        jobs.sort(key=lambda j: j.finished_at or 0.0)
        folder = DataFolder(self.queue.data_dir)
        for job in jobs:
            if self.free_disk_mb() >= floor_mb:
                return
            results = folder.result_dir(job.id)
            if results.is_dir():
                shutil.rmtree(results, ignore_errors=True)
                report.result_folders_deleted.append(job.id)
                log.warning("retention: emergency purge deleted results of job %s", job.id)


EMERGENCY_PURGE_INTERVAL_S = 5.0
"""Seconds between retention passes while free space is under the emergency floor."""


class RetentionSchedule:
    """When ``contourd serve`` runs retention passes: at start, every
    ``check_interval_s``, and often while the disk is under the emergency floor
    (the purge must not wait five minutes).

    Parameters
    ----------
    retention
        The retention of the data folder (it asks its own config provider).
    clock_s
        Monotonic clock in seconds (tests pass their own).
    """

    def __init__(
        self, retention: Retention, *, clock_s: Callable[[], float] = time.monotonic
    ) -> None:
        self.retention = retention
        self.clock_s = clock_s
        self.next_at = 0.0
        self.next_emergency_at = 0.0

    def tick(self) -> None:
        """Run a pass when one is due; never raises."""
        config = self.retention.config
        now = self.clock_s()
        emergency = self.retention.free_disk_mb() < config.emergency_free_disk_mb
        if now < self.next_at and not (emergency and now >= self.next_emergency_at):
            return
        try:
            report = self.retention.run_once()
            if report.series_purged:
                log.info("retention purged %d series", len(report.series_purged))
        except Exception as err:  # boundary: retention must not stop the node
            log.error("retention pass failed (%s); it runs again later", err)
        done = self.clock_s()
        self.next_emergency_at = done + EMERGENCY_PURGE_INTERVAL_S
        if now >= self.next_at:
            self.next_at = done + config.check_interval_s
