"""Scale out on a real PostgreSQL: one receiving node, three worker processes.

20 series pushed with DCMTK storescu; one worker is SIGKILLed in the middle of
a job; every series comes back to the DCMTK storescp TPS exactly once, the
killed worker's job taken over by another worker when its lease ran out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import referenced_uids, wait_for
from node_harness import node_with_tps, storescu_push

from contourd.database import Database
from daemon.job_queue import DatabaseJobQueue, JobState
from inference.phantom import make_phantom_series

pytestmark = [pytest.mark.interop, pytest.mark.slow]

SERIES = 20
WORKERS = 3


def _kill_a_worker_mid_job(
    queue: DatabaseJobQueue, procs: dict[str, subprocess.Popen[bytes]], deadline_s: float
) -> tuple[str, int]:
    """SIGKILL a worker whose job is ``running`` under its lease; (worker id, job id).

    The worker is frozen (SIGSTOP) first, then its job is checked, so it is
    killed in the middle of the job, not after it.
    """

    def kill_one_running() -> tuple[str, int] | None:
        for info in queue.workers():
            proc = procs.get(info.worker_id)
            if proc is None or info.current_job is None:
                continue
            os.kill(proc.pid, signal.SIGSTOP)
            job = queue.get(info.current_job)
            if job.state == JobState.RUNNING and job.lease_owner == info.worker_id:
                proc.kill()
                proc.wait()
                return info.worker_id, job.id
            os.kill(proc.pid, signal.SIGCONT)
        return None

    killed = wait_for(
        kill_one_running, deadline_s, "a worker running a job (are the series too small?)"
    )
    return killed  # type: ignore[return-value]


def test_one_receiver_three_workers_on_postgresql_survive_a_killed_worker(
    tmp_path: Path, postgres_url: str
) -> None:
    with node_with_tps(tmp_path, database=postgres_url, node_args=("--role", "receive")) as env:
        tps, receiver, config, data_dir = env.tps, env.node, env.config, env.data_dir
        queue = DatabaseJobQueue(data_dir, database=Database(data_dir, postgres_url))
        procs: dict[str, subprocess.Popen[bytes]] = {}
        logs = []
        try:
            for i in range(WORKERS):
                worker_id = f"scale-worker-{i + 1}"
                log = open(tmp_path / f"{worker_id}.log", "wb")  # noqa: SIM115 (closed below)
                logs.append(log)
                command = ["worker", "-c", str(config), "--id", worker_id]
                procs[worker_id] = subprocess.Popen(
                    [sys.executable, "-m", "daemon", *command],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            wait_for(lambda: len(queue.workers()) == WORKERS, 60, "three workers in the table")
            all_series = [
                make_phantom_series(tmp_path / f"ct{i}", shape_zyx=(16, 96, 96), seed=i)
                for i in range(SERIES)
            ]
            with ThreadPoolExecutor(max_workers=4) as pool:
                pushes = [pool.submit(storescu_push, receiver.port, s.paths) for s in all_series]
                killed_worker, killed_job = _kill_a_worker_mid_job(queue, procs, 120)
                for push in pushes:
                    push.result()
            received = wait_for(
                lambda: len(tps.received()) >= SERIES and tps.received(),
                600,
                f"{SERIES} RTSTRUCTs at the TPS; receiver log: {receiver.log_text()[-2000:]}",
            )
            # Anything sent twice would arrive late: wait until the queue has nothing left.
            wait_for(
                lambda: all(j.finished for j in queue.recent(100)) and len(queue.recent(100)),
                60,
                "every job finished",
            )
            received = tps.received()
            assert len(received) == SERIES, [rs.SOPInstanceUID for rs in received]
            expected = sorted(
                tuple(sorted(h.SOPInstanceUID for h in s.headers)) for s in all_series
            )
            assert sorted(tuple(sorted(referenced_uids(rs))) for rs in received) == expected
            jobs = queue.recent(100)
            assert len(jobs) == SERIES and {j.state for j in jobs} == {JobState.SENT}
            taken_over = queue.get(killed_job)
            assert taken_over.attempts >= 2
            events = queue.events(killed_job)
            assert any(
                e.state == "complete" and f"{killed_worker!r} expired" in (e.message or "")
                for e in events
            ), events
            finishers = [e.worker for e in events if e.state == "written"]
            assert finishers and finishers[-1] != killed_worker
            # Every worker that is still alive did some of the work.
            busy = {e.worker for j in jobs for e in queue.events(j.id) if e.state == "running"}
            assert busy - {killed_worker}, busy
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            for log in logs:
                log.close()
            queue.close()
