"""Job-queue throughput: 8 worker processes claim and complete 10,000 no-op jobs.

For each backend (SQLite in a data folder, and PostgreSQL, the peer compared
in the same run) the script submits ``--jobs`` jobs, then starts
``--workers`` processes that each loop: claim (lease) -> ``routed`` ->
``running`` -> ``shadow`` (the model runtime is a no-op, so only the queue is
measured). It reports jobs per second over the whole drain, the claim latency
(median, p99, of the ``claim`` call that returned a job), and checks that no
job was done twice and none was left: every job ends ``shadow`` with exactly
one claim.

Without ``--postgres-url`` a throwaway PostgreSQL server is started with the
Debian binaries (initdb + pg_ctl, as for the tests; fsync off).

Usage::

    python benchmarks/queue_benchmark.py --jobs 10000 --workers 8
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from contourd.database import Database  # noqa: E402
from daemon.job_queue import DatabaseJobQueue, JobState  # noqa: E402


@dataclass(frozen=True)
class _Completion:
    study_uid: str
    series_uid: str
    version: int
    spool_dir: Path
    instance_paths: tuple[Path, ...]
    num_instances: int
    calling_ae: str
    called_ae: str
    modality: str


def _worker(data_dir: str, url: str | None, worker_id: str, out: mp.Queue) -> None:  # type: ignore[type-arg]
    queue = DatabaseJobQueue(Path(data_dir), database=Database(Path(data_dir), url))
    done: list[int] = []
    latencies_s: list[float] = []
    first_claim_at = time.time()
    while True:
        t0 = time.perf_counter()
        job = queue.claim(worker_id, lease_s=300)
        elapsed = time.perf_counter() - t0
        if job is None:
            break
        latencies_s.append(elapsed)
        queue.transition(job.id, JobState.ROUTED, worker_id=worker_id, rule="noop")
        queue.transition(job.id, JobState.RUNNING, worker_id=worker_id)
        queue.transition(job.id, JobState.SHADOW, worker_id=worker_id, message="no-op model")
        done.append(job.id)
    queue.close()
    out.put((worker_id, done, latencies_s, first_claim_at, time.time()))


def run_backend(name: str, data_dir: Path, url: str | None, jobs: int, workers: int) -> dict:
    """Submit ``jobs``, drain them with ``workers`` processes; figures and checks."""
    queue = DatabaseJobQueue(data_dir, database=Database(data_dir, url))
    t0 = time.perf_counter()
    for i in range(jobs):
        queue.submit_series(
            _Completion("1.2.3", f"1.2.3.{i}", 1, data_dir / "spool", (), 1, "B", "C", "CT")
        )
    submit_s = time.perf_counter() - t0
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [
        ctx.Process(target=_worker, args=(str(data_dir), url, f"bench-{k}", out))
        for k in range(workers)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=3600) for _ in procs]
    # From the first worker's first claim to the last worker's last job (process
    # start-up is not queue time).
    drain_s = max(r[4] for r in results) - min(r[3] for r in results)
    for p in procs:
        p.join()
    done = [job_id for _, ids, *_ in results for job_id in ids]
    latencies = sorted(x for _, _, lat, *_ in results for x in lat)
    counts = queue.counts_by_state()
    attempts = queue.count_rows("SELECT COUNT(*) FROM jobs WHERE attempts <> 1")
    queue.close()
    return {
        "backend": name,
        "jobs": jobs,
        "workers": workers,
        "submit_s": submit_s,
        "drain_s": drain_s,
        "jobs_per_s": len(done) / drain_s,
        "claim_median_ms": 1000 * statistics.median(latencies),
        "claim_p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "done_twice": len(done) - len(set(done)),
        "not_done": jobs - len(set(done)),
        "shadow": counts["shadow"],
        "claimed_not_once": attempts,
        "per_worker": sorted(len(ids) for _, ids, *_ in results),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--postgres-url", default=None, help="an empty PostgreSQL database")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    rows = []
    server = None
    try:
        for backend in args.backends.split(","):
            with tempfile.TemporaryDirectory(prefix=f"queue-bench-{backend}-") as tmp:
                url = None
                if backend == "postgresql":
                    url = args.postgres_url
                    if url is None:
                        from postgres_server import PostgresServer, server_bindir

                        bindir = server_bindir()
                        if bindir is None:
                            print("postgresql: skipped (apt-get install postgresql)")
                            continue
                        server = PostgresServer(bindir).start()
                        url = server.new_database()
                rows.append(run_backend(backend, Path(tmp), url, args.jobs, args.workers))
                print(rows[-1], flush=True)
    finally:
        if server is not None:
            server.stop()
    print()
    print(f"{args.jobs} no-op jobs, {args.workers} worker processes (claim, 3 transitions each)")
    print("backend     jobs/s  claim median ms  claim p99 ms  done twice  not done")
    for r in rows:
        print(
            f"{r['backend']:<10} {r['jobs_per_s']:7.0f} {r['claim_median_ms']:16.2f} "
            f"{r['claim_p99_ms']:13.2f} {r['done_twice']:11d} {r['not_done']:9d}"
        )
    ok = all(
        r["done_twice"] == 0 and r["not_done"] == 0 and r["claimed_not_once"] == 0 for r in rows
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
