"""Soak: 50 series from 5 concurrent storescu senders while the worker is SIGKILLed
three times and the TPS (storescp) goes down and up once."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import wait_for
from node_harness import RunningNode, node_with_tps, storescu_push

from daemon.job_queue import FINISHED_STATES, JobState, SqliteJobQueue
from inference.phantom import make_phantom_series

pytestmark = [pytest.mark.interop, pytest.mark.slow]

SERIES = 50
SENDERS = 5
SLICES = 12


def _sent(queue: SqliteJobQueue) -> int:
    return queue.counts_by_state().get(JobState.SENT.value, 0)


def _held_work(db_path: Path, worker_name: str) -> int:
    """Jobs and deliveries the named worker holds a lease on right now."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10) as conn:
        jobs = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE lease_owner = ? AND lease_expires_at IS NOT NULL",
            (worker_name,),
        ).fetchone()[0]
        sends = conn.execute(
            "SELECT COUNT(*) FROM job_deliveries WHERE lease_owner = ? AND state = 'sending'",
            (f"{worker_name}-send",),
        ).fetchone()[0]
    return int(jobs) + int(sends)


def _kill_worker_mid_job(node: RunningNode, queue: SqliteJobQueue, kills: list[int]) -> None:
    """SIGKILL the worker while it holds a job, then wait for its replacement.

    The worker is frozen (SIGSTOP) and killed only when it holds a lease at
    that moment; otherwise it is let go on (SIGCONT) and caught again.
    """
    assert node.proc is not None
    name = f"worker-{socket.gethostname()}-{node.proc.pid}-1"  # see WorkerPool.start

    def caught_mid_job() -> int | None:
        [pid] = node.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        if _held_work(queue.db_path, name):
            os.kill(pid, signal.SIGKILL)
            return pid
        os.kill(pid, signal.SIGCONT)
        return None

    pid = wait_for(caught_mid_job, 120, "the worker holding a job")
    kills.append(int(pid))  # type: ignore[call-overload]
    wait_for(lambda: node.worker_pids() and node.worker_pids()[0] != pid, 60, "worker restarted")


def test_fifty_series_five_senders_three_worker_kills_and_a_tps_outage(tmp_path: Path) -> None:
    with node_with_tps(tmp_path, max_attempts=1000, worker={"max_attempts": 10}) as env:
        tps, node = env.tps, env.node
        all_series = [
            make_phantom_series(tmp_path / f"ct{i}", shape_zyx=(SLICES, 64, 64), seed=i)
            for i in range(SERIES)
        ]
        queue = SqliteJobQueue(node.data_dir)
        kills: list[int] = []
        chaos_error: list[BaseException] = []

        def chaos() -> None:
            try:
                wait_for(lambda: _sent(queue) >= 5, 300, "5 results sent")
                _kill_worker_mid_job(node, queue, kills)
                wait_for(lambda: _sent(queue) >= 15, 300, "15 results sent")
                tps.stop()  # the TPS goes down ...
                wait_for(queue.failing_destinations, 120, "a send failing while the TPS is down")
                _kill_worker_mid_job(node, queue, kills)  # ... a worker dies during the outage ...
                tps.start()  # ... and the TPS comes back on the same port
                wait_for(lambda: _sent(queue) >= 30, 300, "30 results sent")
                _kill_worker_mid_job(node, queue, kills)
            except BaseException as err:  # reported by the test thread
                chaos_error.append(err)

        chaos_thread = threading.Thread(target=chaos, name="chaos")
        try:
            chaos_thread.start()
            with ThreadPoolExecutor(max_workers=SENDERS) as pool:
                # storescu_push raises unless every image was acknowledged.
                list(pool.map(lambda s: storescu_push(node.port, s.paths), all_series))
            chaos_thread.join(timeout=900)
            assert not chaos_error, chaos_error
            assert len(kills) == 3

            def all_finished() -> bool:
                jobs = queue.recent(limit=1000)
                return len(jobs) >= SERIES and all(j.state in FINISHED_STATES for j in jobs)

            wait_for(all_finished, 600, f"every job finished; log: {node.log_tail()}")
            jobs = queue.recent(limit=1000)
            assert len(jobs) == SERIES  # one job per series, none made twice
            assert {j.state for j in jobs} == {JobState.SENT}, [
                (j.id, j.state.value, j.error) for j in jobs if j.state != JobState.SENT
            ]
            pushed = {s.headers[0].SeriesInstanceUID: len(s.paths) for s in all_series}
            # Nothing acknowledged is lost: each job holds every image its sender pushed.
            assert {j.series_uid: j.num_instances for j in jobs} == pushed

            received = tps.received()
            by_series: dict[str, set[str]] = defaultdict(set)
            for rs in received:
                referenced = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
                series_uid = referenced.RTReferencedSeriesSequence[0].SeriesInstanceUID
                by_series[series_uid].add(rs.SOPInstanceUID)
            assert set(by_series) == set(pushed)
            # Exactly one RTSTRUCT per series at the TPS.
            assert {uid: len(sops) for uid, sops in by_series.items()} == dict.fromkeys(pushed, 1)
            # Each kill hit a worker holding work, and the supervisor released it at once.
            released = [e for j in jobs for e in queue.events(j.id) if e.state == "lease_released"]
            assert len({e.at for e in released}) >= 3, released
        finally:
            chaos_thread.join(timeout=5)
