"""The worker: leases jobs, routes, runs the approved models, writes the results.

A worker runs in its own process (``contourd worker``, started and restarted
by ``contourd serve``), so a crash or a SIGKILL in inference never takes the
storage SCP down; the job's lease then runs out and the next worker claims
it again (see :mod:`daemon.job_queue`). Between jobs the worker keeps its
networks warm (:class:`inference.predictor.PredictorCache`).

One job, in three steps (:meth:`Worker._route`, :meth:`Worker._run`,
:meth:`Worker._deliver`), each moving the job row through its states:

1. route the series (``routing.engine.route``) on the attributes recorded
   when it completed (:func:`daemon.series_intake.submit_completion`) with
   the config in use (hot reloaded): no rule -> ``not_routed``; the rule's
   ``schedule`` window is closed -> ``scheduled`` until it opens; else ``routed`` with the rule,
   models, destinations and outputs. When several rules match
   (``continue: true``), the first one's actions are used and the others are
   listed in the job's warnings.
2. run: resolve each model to an APPROVED version
   (:func:`model_store.resolution.resolve_models`, the resolver ``contourd
   check`` and ``segment`` use too); a model that is not approved fails the
   job with the registry's message, which names the ``contourd models
   approve`` command. Then ``running``: ``inference.pipeline.segment_series``
   on the spooled files.
3. deliver: write ``results/<job_id>/RS.<SOPInstanceUID>.dcm`` (and a SEG when
   the rule asks for one) atomically with :mod:`inference.outputs`, then
   ``written`` (or ``shadow`` for shadow rules, which are never sent); make
   the first send attempt at once (:class:`daemon.dispatch.Dispatcher`);
   retries belong to the node's dispatcher. Then draw ``preview.png`` (a
   montage of slices with the contours over them), after the send so that it
   adds nothing to the latency.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from contourd.data_folder import DataFolder
from contourd.database import POSTGRESQL
from contourd.errors import ContourdError, SeriesFilesError
from daemon.config import ContourdConfig
from daemon.dispatch import Dispatcher
from daemon.feedback_intake import handle_reviewed_set
from daemon.job_queue import DatabaseJobQueue, Job, JobState, LeaseLostError
from daemon.supersession import mark_predecessor
from inference.grid_file import GRID_FILENAME, write_grid
from inference.outputs import WrittenOutputs, identify_algorithm, write_preview, write_results
from inference.pipeline import SegmentationResult, segment_series
from inference.predictor import PredictorCache
from model_store.approved import ApprovedModel
from model_store.registry import ModelRegistry
from model_store.resolution import resolve_models
from routing.engine import RouteMatch, route
from routing.schedule import next_window_start
from routing.series_attributes import SeriesAttributes

log = logging.getLogger(__name__)

ConfigSource = Callable[[], ContourdConfig]


def default_worker_id() -> str:
    """``worker-<host>-<pid>``: unique among the processes sharing a database."""
    return f"worker-{socket.gethostname()}-{os.getpid()}"


class _LeaseKeeper:
    """Renews a job's lease every third of its length while the job runs."""

    def __init__(self, queue: DatabaseJobQueue, job_id: int, worker_id: str, lease_s: float):
        self.queue, self.job_id, self.worker_id, self.lease_s = queue, job_id, worker_id, lease_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.queue.renew_lease(self.job_id, self.worker_id, self.lease_s)
                self.queue.heartbeat(self.worker_id, current_job=self.job_id, state="busy")
            except LeaseLostError:
                if self.queue.get(self.job_id).state != JobState.RUNNING:
                    return  # this worker released the lease itself (results written)
                log.error("job %s: lease lost; another worker has it", self.job_id)
                self.lost.set()
                return

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Worker:
    """Processes jobs from the queue, one at a time.

    Parameters
    ----------
    config
        Returns the config in use (called once per job, so a reloaded config
        applies to the next job).
    queue
        The job queue.
    worker_id
        Lease owner name; unique per process.
    """

    def __init__(
        self,
        config: ConfigSource,
        queue: DatabaseJobQueue,
        *,
        worker_id: str | None = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.worker_id = worker_id or default_worker_id()
        self.predictor_cache = PredictorCache()
        self.stop_requested = threading.Event()
        self.current_job: int | None = None
        self._registry: ModelRegistry | None = None
        self._waiting_for_disk = False
        self._claim_error: str | None = None

    # -- loop -----------------------------------------------------------------
    def run(self, *, once: bool = False) -> int:
        """Claim and process jobs until :attr:`stop_requested`; returns jobs processed.

        With ``once``, returns as soon as the queue has no claimable job.
        """
        done = 0
        listener = self.queue.listener()
        last_beat = 0.0
        try:
            while not self.stop_requested.is_set():
                if time.monotonic() - last_beat >= self.config().worker.heartbeat_s:
                    try:
                        self.queue.heartbeat(self.worker_id, current_job=None, state="idle")
                    except Exception as err:
                        if not _disk_full(err):
                            raise
                    last_beat = time.monotonic()
                if self._disk_under_floor():
                    self.stop_requested.wait(self.config().worker.poll_interval_s)
                    continue
                try:
                    worked = self.process_one()
                except Exception as err:
                    if not _disk_full(err):
                        raise
                    if str(err) != self._claim_error:  # once, not at every poll
                        log.error(
                            "worker %s: cannot claim a job (%s); waiting", self.worker_id, err
                        )
                    self._claim_error = str(err)
                    self.stop_requested.wait(self.config().worker.poll_interval_s)
                    continue
                self._claim_error = None
                if worked:
                    done += 1
                    last_beat = 0.0
                    continue
                if once:
                    break
                worker = self.config().worker
                if self.queue.database.dialect == POSTGRESQL:
                    listener.wait(worker.listen_recheck_s, self.stop_requested)
                else:
                    self.stop_requested.wait(worker.poll_interval_s)
        finally:
            listener.close()
            self.queue.remove_worker(self.worker_id)
        return done

    def _disk_under_floor(self) -> bool:
        """True while the data disk is under ``node.min_free_disk_mb`` (no job is claimed:
        it could not write its result, and the emergency purge needs the space)."""
        floor_mb = self.config().node.min_free_disk_mb
        free_mb = shutil.disk_usage(self.queue.data_dir).free / 2**20 if floor_mb > 0 else 0.0
        full = floor_mb > 0 and free_mb < floor_mb
        if full and not self._waiting_for_disk:
            log.warning(
                "worker %s: free disk %.0f MiB under node.min_free_disk_mb %d MiB; "
                "claiming no job until space returns",
                self.worker_id,
                free_mb,
                floor_mb,
            )
        elif not full and self._waiting_for_disk:
            log.info("worker %s: disk space is back; claiming jobs again", self.worker_id)
        self._waiting_for_disk = full
        return full

    def process_one(self) -> bool:
        """Claim one job and process it; False when none was claimable."""
        config = self.config()
        job = self.queue.claim(self.worker_id, config.worker.lease_s)
        if job is None:
            return False
        self.current_job = job.id
        self.queue.heartbeat(self.worker_id, current_job=job.id, state="busy")
        try:
            with _LeaseKeeper(self.queue, job.id, self.worker_id, config.worker.lease_s):
                self._process(job, config)
        except LeaseLostError as err:
            log.error("job %s abandoned: %s", job.id, err)
        except ContourdError as err:
            self._fail(job, str(err))
        except Exception as err:  # boundary: one job; the error is kept on the job row
            if _disk_full(err):
                # Not the series' fault: give the job back; it runs again once space
                # returns (workers claim nothing under node.min_free_disk_mb).
                log.error("job %s: disk full while processing (%s); job given back", job.id, err)
                self._give_back(job, f"disk full while processing ({err}); runs again later")
                return True
            log.exception("job %s: unexpected error", job.id)
            self._fail(job, f"internal error {type(err).__name__}: {err}; see the worker log")
        finally:
            self.current_job = None
        return True

    def _give_back(self, job: Job, reason: str) -> None:
        try:
            self.queue.release_leases([self.worker_id], reason)
        except sqlite3.Error as err:
            log.error("job %s: lease not released (%s); it runs out by itself", job.id, err)

    def _fail(self, job: Job, message: str) -> None:
        log.error("job %s failed: %s", job.id, message)
        try:
            self.queue.transition(
                job.id, JobState.FAILED, worker_id=self.worker_id, message=message
            )
        except LeaseLostError as err:
            log.error("job %s: could not record the failure: %s", job.id, err)

    # -- one job: route, run, deliver ------------------------------------------------
    def _process(self, job: Job, config: ContourdConfig) -> None:
        feedback = handle_reviewed_set(job, config, self.queue)
        if feedback is not None:  # a clinician's reviewed RTSTRUCT, measured
            self.queue.transition(
                job.id, JobState.NOT_ROUTED, worker_id=self.worker_id, message=feedback
            )
            return
        routing = self._route(job, config)
        if routing is None:
            return
        models, label, result = self._run(job, config, routing)
        self._deliver(job, config, routing, models, label, result)

    def _route(self, job: Job, config: ContourdConfig) -> _Routing | None:
        """Route the series; ``None`` when the job ends here (not routed, or scheduled)."""
        wid = self.worker_id
        attrs = self._attributes(job)
        decision = route(attrs, config.rules, body_part_synonyms=config.body_part_synonyms)
        description = attrs.series_description or ""
        if not decision.routed:
            details = "; ".join(e.describe() for e in decision.explanations) or "no rules"
            message = f"{decision.reason} for {attrs.summary()}: {details}"
            self._not_routed(job, message, description)
            log.info("job %s: not routed (%s)", job.id, decision.reason)
            return None
        picked = self._pick_match(job, decision.matched, attrs)
        if picked is None:
            return None
        match, warnings = picked
        fields: dict[str, Any] = {
            "series_description": description,
            "rule": match.rule,
            "models": [str(m) for m in match.models],
            "destinations": list(match.send_to),
            "outputs": list(match.outputs),
            "shadow": match.shadow,
            "priority": match.priority,
        }
        now = datetime.now().astimezone()
        if not match.may_run_at(now):
            opens = next_window_start(now, match.schedule)
            self.queue.transition(
                job.id,
                JobState.SCHEDULED,
                worker_id=wid,
                release_lease=True,
                message=f"rule {match.rule!r} runs in its window; queued until {opens}",
                not_before=opens.timestamp(),
                attempts=0,
                **fields,
            )
            return None
        self.queue.transition(job.id, JobState.ROUTED, worker_id=wid, **fields)
        return _Routing(match, attrs, warnings, now)

    def _pick_match(
        self, job: Job, matched: Sequence[RouteMatch], attrs: SeriesAttributes
    ) -> tuple[RouteMatch, list[str]] | None:
        """The rule this job runs, and warnings; ``None`` (not routed) when its pinned
        rule no longer matches. Further matches of an unpinned job become sibling jobs."""
        if job.pinned_rule is None:
            warnings = []
            # continue: true -> every further matching rule runs as its own job.
            for slot, other in enumerate(matched[1:], start=1):
                sibling = self.queue.spawn_rule_job(job.id, slot, other.rule)
                warnings.append(f"rule {other.rule!r} also matched: job {sibling}")
            return matched[0], warnings
        pinned = [m for m in matched if m.rule == job.pinned_rule]
        if pinned:
            return pinned[0], []
        message = (
            f"rule {job.pinned_rule!r} no longer matches {attrs.summary()} "
            "(the config changed since the series was routed)"
        )
        self._not_routed(job, message, attrs.series_description or "")
        return None

    def _not_routed(self, job: Job, message: str, description: str) -> None:
        self.queue.transition(
            job.id,
            JobState.NOT_ROUTED,
            worker_id=self.worker_id,
            message=message,
            series_description=description,
        )

    def _run(
        self, job: Job, config: ContourdConfig, routing: _Routing
    ) -> tuple[list[ApprovedModel], str, SegmentationResult]:
        """Resolve the rule's approved models and segment the series (state ``running``)."""
        match = routing.match
        models = self._resolve(match, config)
        label = match.render_label(
            model_name=models[0].name,
            model_version=str(models[0].version),
            when=routing.now,
            attrs=routing.attrs,
        )
        self.queue.transition(
            job.id,
            JobState.RUNNING,
            worker_id=self.worker_id,
            label=label,
            models=[f"{m.name} {m.version}" for m in models],
        )
        result = segment_series(
            job.instance_paths,
            models,
            device=config.worker.device,
            predictor_cache=self.predictor_cache,
            nnunet_mode=match.nnunet_mode,  # type: ignore[arg-type]
        )
        return models, label, result

    def _deliver(
        self,
        job: Job,
        config: ContourdConfig,
        routing: _Routing,
        models: Sequence[ApprovedModel],
        label: str,
        result: SegmentationResult,
    ) -> None:
        """Write the results, then ``shadow`` / ``written`` -> first send -> preview."""
        wid, match = self.worker_id, routing.match
        t0 = time.perf_counter()
        written = self._write_outputs(job, result, models, match, label, config)
        timings = dict(result.timings_s)
        timings["write"] = time.perf_counter() - t0
        done_fields: dict[str, Any] = {
            "result_files": written.files,
            "warnings": routing.warnings + list(result.warnings) + written.warnings,
            "timings_s": timings,
        }
        if match.shadow:
            message = "shadow rule: result recorded, not sent"
            self.queue.transition(
                job.id, JobState.SHADOW, worker_id=wid, message=message, **done_fields
            )
        elif not match.send_to:
            self.queue.add_deliveries(job.id, match.send_to)
            self.queue.transition(job.id, JobState.WRITTEN, worker_id=wid, **done_fields)
            message = "rule has no destinations"
            self.queue.transition(job.id, JobState.SENT, worker_id=wid, message=message)
        else:
            self._send(job, config, match, done_fields, result)
        self._preview(job, result, config)

    def _send(
        self,
        job: Job,
        config: ContourdConfig,
        match: RouteMatch,
        done_fields: dict[str, Any],
        result: SegmentationResult,
    ) -> None:
        """``written`` (lease released), then the first send attempt at once."""
        self.queue.add_deliveries(job.id, match.send_to)
        self.queue.transition(
            job.id, JobState.WRITTEN, worker_id=self.worker_id, release_lease=True, **done_fields
        )
        timings = done_fields["timings_s"]
        log.info(
            "job %s: %d ROI(s) written in %.2f s; sending to %s",
            job.id,
            len(result.rois),
            timings.get("total", 0.0) + timings["write"],
            ", ".join(match.send_to),
        )
        Dispatcher(
            self.queue,
            lambda: self.config().destinations,
            config.dispatch,
            owner=f"{self.worker_id}-send",
        ).drain(job_id=job.id)

    def _preview(self, job: Job, result: SegmentationResult, config: ContourdConfig) -> None:
        """Draw the preview montage after the first send, so it adds no latency."""
        if not config.worker.preview:
            return
        t0 = time.perf_counter()
        try:
            path = write_preview(self._out_dir(job), result.volume.array, result.rois)
            self.queue.update_fields(job.id, preview_file=path)
        except (OSError, sqlite3.Error) as err:
            # The result is written (and maybe sent): a full disk, or the emergency
            # purge removing a delivered job's folder, costs the preview only.
            log.warning("job %s: no preview (%s); the result is not affected", job.id, err)
            return
        log.debug("job %s: preview in %.2f s", job.id, time.perf_counter() - t0)

    def _out_dir(self, job: Job) -> Path:
        return DataFolder(self.queue.data_dir).result_dir(job.id)

    def _attributes(self, job: Job) -> SeriesAttributes:
        """The record made when the series completed; else (older jobs) the spooled headers."""
        if job.series_attributes is not None:
            return SeriesAttributes.from_record(job.series_attributes)
        try:
            return SeriesAttributes.from_files(job.instance_paths, job.calling_ae, job.called_ae)
        except SeriesFilesError as err:
            raise SeriesFilesError(
                f"series {job.series_uid} version {job.version}: {err}; "
                f"was the spool cleaned up? Send the series again"
            ) from err

    def _resolve(self, match: RouteMatch, config: ContourdConfig) -> list[ApprovedModel]:
        """Approved, hash-checked models of the rule (looked up for every job)."""
        if self._registry is None or self._registry.data_dir != Path(config.data_dir):
            self._registry = ModelRegistry(config.data_dir, database=self.queue.database)
        return resolve_models(self._registry, match.models, rule=match.rule)

    def _write_outputs(
        self,
        job: Job,
        result: SegmentationResult,
        models: Sequence[ApprovedModel],
        match: RouteMatch,
        label: str,
        config: ContourdConfig,
    ) -> WrittenOutputs:
        out_dir = self._out_dir(job)
        if out_dir.exists():  # a re-claimed job: the earlier attempt's files were never sent
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        write_grid(result.volume, out_dir / GRID_FILENAME)  # for feedback; never sent

        def supersede(ds: Dataset) -> None:
            superseded = mark_predecessor(ds, self.queue, job, match.rule)
            if superseded:
                log.info("job %s: %s", job.id, superseded)

        return write_results(
            result,
            identify_algorithm(models, result.run_parameters),
            out_dir,
            label=label,
            outputs=match.outputs,
            uid_root=config.worker.uid_root,
            amend_rtstruct=supersede,
        )


@dataclass(frozen=True)
class _Routing:
    """The outcome of the route step for a job that runs now."""

    match: RouteMatch
    attrs: SeriesAttributes
    warnings: list[str]
    now: datetime


def _disk_full(err: BaseException) -> bool:
    """True for ENOSPC/EDQUOT and SQLite's "database or disk is full"."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return "disk is full" in str(err) or "disk I/O error" in str(err)
