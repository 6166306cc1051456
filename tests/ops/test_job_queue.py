"""The durable job queue: idempotent submission, leases, fencing, deliveries."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import FakeCompletion, OpenQueue, running_job

from contourd.errors import JobError, LeaseLostError
from daemon.job_queue import (
    STRUCTURE_SET_PRIORITY,
    DatabaseJobQueue,
    DeliveryState,
    JobState,
    stage_durations_s,
)


def test_submitting_the_same_series_version_twice_gives_one_job(
    tmp_path: Path, open_queue: OpenQueue
) -> None:
    queue = open_queue(tmp_path)
    first = queue.submit_series(FakeCompletion())
    again = queue.submit_series(FakeCompletion())
    newer = queue.submit_series(FakeCompletion(version=2))
    assert first == again
    assert newer != first
    assert [j.version for j in queue.recent()] == [2, 1]
    assert queue.get(first).state == JobState.COMPLETE


def test_jobs_survive_reopening_the_database(tmp_path: Path, open_queue: OpenQueue) -> None:
    job_id = open_queue(tmp_path).submit_series(FakeCompletion(num_instances=7))
    reopened = open_queue(tmp_path)
    job = reopened.get(job_id)
    assert job.num_instances == 7
    assert [e.state for e in reopened.events(job_id)] == ["complete"]


def test_a_claimed_job_is_not_given_to_a_second_worker(
    tmp_path: Path, open_queue: OpenQueue
) -> None:
    queue_a = open_queue(tmp_path)
    queue_b = open_queue(tmp_path)
    queue_a.submit_series(FakeCompletion())
    job = queue_a.claim("worker-a", lease_s=60)
    assert job is not None and job.lease_owner == "worker-a"
    assert queue_b.claim("worker-b", lease_s=60) is None


def test_a_dead_workers_job_is_claimed_again_after_its_lease_expires(
    tmp_path: Path, open_queue: OpenQueue
) -> None:
    queue_a = open_queue(tmp_path)
    queue_b = open_queue(tmp_path)
    job_id = queue_a.submit_series(FakeCompletion())
    job = queue_a.claim("worker-a", lease_s=30)
    assert job is not None
    queue_a.transition(job_id, JobState.ROUTED, worker_id="worker-a", rule="ct")
    queue_a.transition(job_id, JobState.RUNNING, worker_id="worker-a")
    # worker-a "dies" here: it never renews its lease.
    assert queue_b.claim("worker-b", lease_s=60) is None  # the lease still holds
    taken = queue_b.claim("worker-b", lease_s=60, now=time.time() + 31)
    assert taken is not None and taken.id == job_id and taken.attempts == 2
    with pytest.raises(LeaseLostError):
        queue_a.transition(job_id, JobState.WRITTEN, worker_id="worker-a")
    with pytest.raises(LeaseLostError):
        queue_a.renew_lease(job_id, "worker-a", 60)
    messages = [e.message or "" for e in queue_b.events(job_id)]
    assert any("worker-a" in m and "expired" in m for m in messages)


def test_a_job_taken_over_after_routing_is_routed_again(
    tmp_path: Path, open_queue: OpenQueue
) -> None:
    # The soak test met this: worker-a routed the job and was killed before it
    # ran; the supervisor released its lease and worker-b routed it again.
    queue = open_queue(tmp_path)
    job_id = queue.submit_series(FakeCompletion())
    assert queue.claim("worker-a", lease_s=60) is not None
    queue.transition(job_id, JobState.ROUTED, worker_id="worker-a", rule="ct")
    assert queue.release_leases(["worker-a"], "worker-a died") == [job_id]
    taken = queue.claim("worker-b", lease_s=60)
    assert taken is not None and taken.id == job_id and taken.state == JobState.ROUTED
    queue.transition(job_id, JobState.ROUTED, worker_id="worker-b", rule="ct")
    queue.transition(job_id, JobState.RUNNING, worker_id="worker-b")
    assert queue.get(job_id).state == JobState.RUNNING
    # With the config changed meanwhile, the second routing may find no rule.
    other = queue.submit_series(FakeCompletion(version=2))
    assert queue.claim("worker-b", lease_s=60) is not None
    queue.transition(other, JobState.ROUTED, worker_id="worker-b", rule="ct")
    queue.transition(other, JobState.NOT_ROUTED, worker_id="worker-b", message="no rule")
    assert queue.get(other).state == JobState.NOT_ROUTED


def test_a_renewed_lease_keeps_the_job(tmp_path: Path, open_queue: OpenQueue) -> None:
    queue = open_queue(tmp_path)
    job_id = queue.submit_series(FakeCompletion())
    assert queue.claim("worker-a", lease_s=30) is not None
    queue.renew_lease(job_id, "worker-a", 60)
    # Past the first lease: the renewal must be what protects the job ...
    assert queue.claim("worker-b", lease_s=60, now=time.time() + 31) is None
    # ... until the renewed lease runs out too.
    taken = queue.claim("worker-b", lease_s=60, now=time.time() + 61)
    assert taken is not None and taken.id == job_id


def test_a_job_that_keeps_killing_workers_ends_failed(
    tmp_path: Path, open_queue: OpenQueue
) -> None:
    queue = open_queue(tmp_path, max_attempts=2)
    job_id = queue.submit_series(FakeCompletion())
    start = time.time()
    for n in range(2):
        # Each worker dies holding a 30 s lease; the next claim comes after it ran out.
        job = queue.claim(f"w{n}", lease_s=30, now=start + 31 * n)
        assert job is not None and job.id == job_id
        queue.transition(job.id, JobState.ROUTED, worker_id=f"w{n}")
        queue.transition(job.id, JobState.RUNNING, worker_id=f"w{n}")
    assert queue.claim("w3", lease_s=60, now=start + 62) is None
    job = queue.get(job_id)
    assert job.state == JobState.FAILED
    assert "claimed 2 times" in (job.error or "")


def test_illegal_transition_is_refused_with_the_allowed_states(
    tmp_path: Path, open_queue: OpenQueue
) -> None:
    queue = open_queue(tmp_path)
    job_id = queue.submit_series(FakeCompletion())
    with pytest.raises(JobError, match="cannot go from complete to sent"):
        queue.transition(job_id, JobState.SENT)


def test_failure_keeps_the_error_message_and_clears_the_lease(
    tmp_path: Path, open_queue: OpenQueue
) -> None:
    queue = open_queue(tmp_path)
    job_id = queue.submit_series(FakeCompletion())
    queue.claim("w", lease_s=60)
    job = queue.transition(job_id, JobState.FAILED, worker_id="w", message="model 'x' not approved")
    assert job.error == "model 'x' not approved"
    assert job.lease_owner is None and job.finished_at is not None
    assert queue.last_error() is not None and queue.last_error()[0] == job_id


def test_scheduled_job_waits_until_its_window(tmp_path: Path, open_queue: OpenQueue) -> None:
    queue = open_queue(tmp_path)
    job_id = queue.submit_series(FakeCompletion())
    queue.claim("w", lease_s=60)
    queue.transition(
        job_id,
        JobState.SCHEDULED,
        worker_id="w",
        release_lease=True,
        not_before=time.time() + 60,
    )
    assert queue.claim("w", lease_s=60) is None
    job = queue.claim("w", lease_s=60, now=time.time() + 61)  # the window has opened
    assert job is not None and job.id == job_id


def test_higher_priority_job_is_claimed_first(tmp_path: Path, open_queue: OpenQueue) -> None:
    queue = open_queue(tmp_path)
    low = queue.submit_series(FakeCompletion(series_uid="1.2.3.1"))
    high = queue.submit_series(FakeCompletion(series_uid="1.2.3.2"))
    queue.update_fields(high, priority=5)
    first = queue.claim("w", lease_s=60)
    assert first is not None and first.id == high
    second = queue.claim("w", lease_s=60)
    assert second is not None and second.id == low


def test_a_returned_structure_set_waits_behind_image_series(
    tmp_path: Path, open_queue: OpenQueue
) -> None:
    queue = open_queue(tmp_path)
    reviewed = queue.submit_series(FakeCompletion(series_uid="1.2.3.1", modality="RTSTRUCT"))
    ct = queue.submit_series(FakeCompletion(series_uid="1.2.3.2", modality="CT"))
    assert queue.get(reviewed).priority == STRUCTURE_SET_PRIORITY < queue.get(ct).priority == 0
    first = queue.claim("w", lease_s=60)
    assert first is not None and first.id == ct
    second = queue.claim("w", lease_s=60)
    assert second is not None and second.id == reviewed


def _written_job(queue: DatabaseJobQueue, destinations: list[str]) -> int:
    job_id = running_job(queue, destinations=destinations)
    queue.add_deliveries(job_id, destinations)
    queue.transition(
        job_id,
        JobState.WRITTEN,
        worker_id="w",
        release_lease=True,
        result_files=[Path("/r/rtstruct.dcm")],
    )
    return job_id


def test_job_is_sent_only_when_every_destination_has_it(
    tmp_path: Path, open_queue: OpenQueue
) -> None:
    queue = open_queue(tmp_path)
    job_id = _written_job(queue, ["tps", "archive"])
    claimed = {}
    for _ in range(2):
        got = queue.claim_delivery("d", lease_s=60)
        assert got is not None
        claimed[got[1].destination] = got
    assert queue.claim_delivery("d", lease_s=60) is None
    assert queue.get(job_id).state == JobState.SENDING
    queue.finish_delivery(job_id, "tps", "d", ok=True, sop_instance_uids=["1.2.3"])
    assert queue.get(job_id).state == JobState.SENDING
    job = queue.finish_delivery(job_id, "archive", "d", ok=True, sop_instance_uids=["1.2.3"])
    assert job.state == JobState.SENT
    assert [e.state for e in queue.events(job_id)][-1] == "sent"
    assert stage_durations_s(queue.events(job_id)).keys() >= {"processing", "sending", "total"}


def test_failed_attempt_with_retry_time_is_pending_until_then(
    tmp_path: Path, open_queue: OpenQueue
) -> None:
    queue = open_queue(tmp_path)
    job_id = _written_job(queue, ["tps"])
    assert queue.claim_delivery("d", lease_s=60) is not None
    queue.finish_delivery(job_id, "tps", "d", ok=False, error="refused", retry_at=time.time() + 60)
    assert queue.claim_delivery("d", lease_s=60) is None
    got = queue.claim_delivery("d", lease_s=60, now=time.time() + 61)  # the retry is due
    assert got is not None and got[1].attempts == 2
    job = queue.finish_delivery(job_id, "tps", "d", ok=False, error="refused", retry_at=None)
    assert job.state == JobState.FAILED
    assert "after 2 attempts" in (job.error or "") and "resend" in (job.error or "")


def test_resend_requeues_the_same_files_and_adds_a_new_destination(
    tmp_path: Path, open_queue: OpenQueue
) -> None:
    queue = open_queue(tmp_path)
    job_id = _written_job(queue, ["tps"])
    queue.claim_delivery("d", lease_s=60)
    queue.finish_delivery(job_id, "tps", "d", ok=True)
    job = queue.requeue_delivery(job_id, ["tps", "backup"])
    assert job.state == JobState.WRITTEN
    assert job.result_files == [Path("/r/rtstruct.dcm")]
    states = {d.destination: d.state for d in queue.deliveries(job_id)}
    assert states == {"backup": DeliveryState.PENDING, "tps": DeliveryState.PENDING}


def test_resend_of_a_job_without_results_is_refused(tmp_path: Path, open_queue: OpenQueue) -> None:
    queue = open_queue(tmp_path)
    job_id = queue.submit_series(FakeCompletion())
    with pytest.raises(JobError, match="no result files"):
        queue.requeue_delivery(job_id, ["tps"])


def test_paths_in_the_data_folder_are_stored_relative_to_it(
    tmp_path: Path, open_queue: OpenQueue
) -> None:
    """A host that mounts the data folder elsewhere reads the same files."""
    data = tmp_path / "here"
    spool = data / "spool" / "1.2" / "3.4"
    outside = tmp_path / "elsewhere" / "x.dcm"
    queue = open_queue(data)
    job_id = queue.submit_series(
        FakeCompletion(spool_dir=spool, instance_paths=[spool / "a.dcm", outside])
    )
    stored = queue.conn.rows("SELECT spool_dir, instance_paths FROM jobs WHERE id = ?", (job_id,))
    assert stored[0]["spool_dir"] == "./spool/1.2/3.4"
    assert str(outside) in stored[0]["instance_paths"]
    mounted = tmp_path / "mounted-elsewhere"
    if queue.database.dialect == "sqlite":  # the database lives in the folder: move both
        queue.close()
        data.rename(mounted)
        other_host = open_queue(mounted)
    else:  # PostgreSQL: the same database, the data folder mounted at another path
        other_host = DatabaseJobQueue(mounted, database=queue.database)
    job = other_host.get(job_id)
    assert job.spool_dir == mounted / "spool" / "1.2" / "3.4"
    assert job.instance_paths == [mounted / "spool" / "1.2" / "3.4" / "a.dcm", outside]


def test_an_idle_worker_is_woken_by_a_new_job_on_postgresql(
    tmp_path: Path, open_queue: OpenQueue
) -> None:
    """PostgreSQL: NOTIFY at commit wakes the listener; SQLite: the wait just polls."""
    import threading

    receiver, worker = open_queue(tmp_path), open_queue(tmp_path)
    listener = worker.listener()
    stop = threading.Event()
    woken: list[bool] = []
    postgresql = worker.database.dialect == "postgresql"
    try:
        waiting = threading.Thread(
            target=lambda: woken.append(listener.wait(60.0 if postgresql else 0.2, stop))
        )
        waiting.start()
        receiver.submit_series(FakeCompletion())
        waiting.join(timeout=90)
        assert woken == [postgresql]  # True only when a notification arrived
        assert worker.claim("worker-a", lease_s=60) is not None
    finally:
        stop.set()
        listener.close()
