"""The sentences /healthz and `contourd status` give, and the delivery columns' migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from daemon.job_queue import DB_FILENAME, SqliteJobQueue
from daemon.node_health import NodeFacts, node_problems


def _facts(**changes: object) -> NodeFacts:
    base: dict[str, object] = {
        "config_path": Path("/etc/contourd.yaml"),
        "config_error": None,
        "data_dir": Path("/var/lib/contourd"),
        "free_disk_mb": 5000.0,
        "min_free_disk_mb": 1024,
        "workers_alive": 1,
        "workers_total": 1,
        "worker_restarts": 0,
        "dispatch_failing_unhealthy_s": 600.0,
        "now": 10_000.0,
        "failing_destinations": [],
    }
    base.update(changes)
    return NodeFacts(**base)  # type: ignore[arg-type]


def test_a_node_that_can_do_its_job_has_no_problems() -> None:
    assert node_problems(_facts()) == []
    # A destination failing for less than the threshold is not yet a problem.
    assert node_problems(_facts(failing_destinations=[("tps", 9_500.0, "refused")])) == []


def test_each_reason_is_named_with_its_values_and_the_fix() -> None:
    problems = node_problems(
        _facts(
            config_error="config file /etc/contourd.yaml has 1 problem:\n  rules.0.send_to: x",
            free_disk_mb=12.0,
            workers_alive=0,
            worker_restarts=7,
            failing_destinations=[("tps", 9_000.0, "association to 'tps' aborted")],
        )
    )
    assert len(problems) == 4
    config, disk, workers, dispatch = problems
    assert "/etc/contourd.yaml is invalid" in config and "rules.0.send_to: x" in config
    assert "contourd check -c /etc/contourd.yaml" in config
    assert "12 MiB" in disk and "min_free_disk_mb 1024" in disk and "0xA700" in disk
    assert "no worker process" in workers and "7 restart" in workers
    assert "'tps'" in dispatch and "1000 s" in dispatch and "aborted" in dispatch


def test_an_older_database_gets_the_new_delivery_columns(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DB_FILENAME) as conn:
        conn.execute(
            "CREATE TABLE job_deliveries (job_id INTEGER, destination TEXT, state TEXT, "
            "attempts INTEGER, next_attempt_at FLOAT, last_error TEXT, sent_at FLOAT, "
            "sent_sop_instance_uids TEXT, lease_owner TEXT, lease_expires_at FLOAT, "
            "PRIMARY KEY (job_id, destination))"
        )
    queue = SqliteJobQueue(tmp_path)
    try:
        columns = {r["name"] for r in queue.conn.rows("PRAGMA table_info(job_deliveries)")}
        assert {"accepted_sop_instance_uids", "failing_since"} <= set(columns)
        assert queue.failing_destinations() == []
    finally:
        queue.close()
    SqliteJobQueue(tmp_path).close()  # a second open finds them and adds nothing


def test_workers_in_a_crash_loop_are_a_problem_even_while_one_is_starting() -> None:
    [problem] = node_problems(_facts(workers_alive=1, worker_restarts=9, worker_restarts_recent=3))
    assert "keep exiting" in problem and "3 restart(s) in the last 60 s" in problem
    assert node_problems(_facts(workers_alive=1, worker_restarts=9, worker_restarts_recent=2)) == []
