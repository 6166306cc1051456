"""Operational faults with real peers: dead workers, a TPS that accepted before the
sender died, a broken config edit, a failing destination, a full data disk."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for
from node_harness import (
    RunningNode,
    StoreScp,
    healthz,
    latest_state,
    node_with_tps,
    push_until_running,
    storescu_push,
    wait_for_problem,
)
from ops_fault_helpers import echoscu_ok, fill_disk, mount_tmpfs, storescu_result, unmount

from daemon.job_queue import SqliteJobQueue
from inference.phantom import make_phantom_series

pytestmark = [pytest.mark.interop, pytest.mark.slow]


def _status_text(config: Path) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "status", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def _new_worker_pid(node: RunningNode, old: int) -> int | None:
    try:
        pids = node.worker_pids()
    except (OSError, ValueError):
        return None
    return pids[0] if pids and pids[0] != old else None


def test_worker_killed_after_the_tps_accepted_the_result_does_not_send_it_twice(
    tmp_path: Path,
) -> None:
    # The TPS stores and acknowledges the RTSTRUCT, then holds the association for
    # 60 s, so the worker sits in its release with the acceptance already recorded.
    slow_tps = StoreScp(tmp_path / "tps", extra_args=("--sleep-after", "60"))
    with node_with_tps(
        tmp_path,
        tps=slow_tps,
        dispatch={"connect_timeout_s": 50, "lease_s": 120, "poll_interval_s": 3},
        worker={"lease_s": 60},
    ) as env:
        tps, node = env.tps, env.node
        queue = SqliteJobQueue(node.data_dir)
        series = make_phantom_series(tmp_path / "ct", shape_zyx=(8, 64, 64))
        storescu_push(node.port, series.paths)

        def accepted() -> bool:
            jobs = queue.recent(1)
            return bool(jobs) and any(
                d.accepted_sop_instance_uids for d in queue.deliveries(jobs[0].id)
            )

        wait_for(accepted, 120, f"the TPS's acceptance recorded; log: {node.log_tail()}")
        job = queue.recent(1)[0]
        [delivery] = queue.deliveries(job.id)
        assert delivery.state.value == "sending"  # still in the release: not marked sent yet
        [pid] = node.worker_pids()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: latest_state(queue) == "sent", 60, f"job sent; log: {node.log_tail()}")
        events = queue.events(job.id)
        released = [e for e in events if e.state == "lease_released"]
        assert released and "exited" in (released[0].message or "")
        sent_at = next(e.at for e in events if e.state == "sent")
        assert sent_at < delivery_lease_expiry(queue, job.id, released[0].at)
        assert len(tps.received()) == 1  # acknowledged once, never sent again
        assert "not sent again" in node.log_text()


def delivery_lease_expiry(queue: SqliteJobQueue, job_id: int, released_at: float) -> float:
    """When the dead sender's delivery lease would have run out on its own (120 s)."""
    sending = [e.at for e in queue.events(job_id) if e.state == "sending"]
    return min(sending) + 120.0 if sending else released_at + 120.0


def test_worker_killed_mid_job_releases_its_job_at_once(tmp_path: Path) -> None:
    with node_with_tps(tmp_path, worker={"lease_s": 90}) as env:
        tps, node = env.tps, env.node
        queue, _series = push_until_running(tmp_path, node)
        [pid] = node.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        try:
            job = queue.recent(1)[0]
            if job.state.value != "running":
                pytest.fail("the job finished before the worker could be stopped")
            lease_expiry = float(job.lease_expires_at or 0)
        finally:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: latest_state(queue) == "sent", 180, f"sent; log: {node.log_tail()}")
        events = queue.events(job.id)
        taken_over = next(e for e in events if "taken over" in (e.message or ""))
        assert any(e.state == "lease_released" for e in events)
        # Claimed again before the dead worker's 90 s lease would have run out.
        assert taken_over.at < lease_expiry
        assert len(tps.received()) == 1


def test_broken_config_edit_and_worker_restart_keep_processing_and_say_why(
    tmp_path: Path,
) -> None:
    with node_with_tps(tmp_path) as env:
        tps, node, config = env.tps, env.node, env.config
        queue = SqliteJobQueue(node.data_dir)
        code, body = healthz(node.http_port)
        assert code == 200 and body["problems"] == [], body
        good = config.read_text()
        config.write_text(good.replace("- tps", "- tsp"))
        problems = wait_for_problem(node.http_port, "is invalid")
        assert "tsp" in " ".join(problems)
        exit_code, text = _status_text(config)
        assert exit_code == 4, text
        assert "INVALID" in text and "is invalid" in text and "unknown destination" in text
        [pid] = node.worker_pids()
        os.kill(pid, signal.SIGKILL)  # the restarted worker must not read the broken file
        wait_for(lambda: _new_worker_pid(node, pid), 30, "worker restarted")
        series = make_phantom_series(tmp_path / "ct", shape_zyx=(8, 64, 64))
        storescu_push(node.port, series.paths)
        wait_for(lambda: latest_state(queue) == "sent", 120, f"sent; log: {node.log_tail()}")
        assert len(tps.received()) == 1
        assert node.proc is not None and node.proc.poll() is None
        config.write_text(good)
        wait_for(lambda: healthz(node.http_port)[0] == 200, 30, "/healthz 200 after the fix")


def test_healthz_is_503_while_the_destination_keeps_failing_and_200_once_it_works(
    tmp_path: Path,
) -> None:
    # The TPS is not started: it is down.
    with node_with_tps(tmp_path, start_tps=False, http={"dispatch_failing_unhealthy_s": 2}) as env:
        tps, node, config = env.tps, env.node, env.config
        queue = SqliteJobQueue(node.data_dir)
        series = make_phantom_series(tmp_path / "ct", shape_zyx=(8, 64, 64))
        storescu_push(node.port, series.paths)
        problems = wait_for_problem(node.http_port, "sending to 'tps' has failed since", 120)
        assert "association to 'tps'" in " ".join(problems)
        exit_code, text = _status_text(config)
        assert exit_code == 4 and "sending to 'tps' has failed" in text, text
        tps.start()
        wait_for(lambda: latest_state(queue) == "sent", 60, "sent once the TPS is up")
        wait_for(lambda: healthz(node.http_port)[0] == 200, 30, "/healthz 200 again")


def test_full_data_disk_keeps_the_node_answering_and_it_resumes_by_itself(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    mount_tmpfs(data, 24)
    try:
        with node_with_tps(
            tmp_path,
            node={"min_free_disk_mb": 4},
            retention={"emergency_free_disk_mb": 6, "delete_images_after_h": 1000},
        ) as env:
            tps, node, config = env.tps, env.node, env.config
            queue = SqliteJobQueue(data)
            first = make_phantom_series(tmp_path / "ct1", shape_zyx=(8, 64, 64), seed=1)
            storescu_push(node.port, first.paths)
            first_sent = f"first sent; log: {node.log_tail()}"
            wait_for(lambda: latest_state(queue) == "sent", 120, first_sent)
            first_job = queue.recent(1)[0]

            filler = fill_disk(data)
            assert shutil.disk_usage(data).free < 4 * 2**20
            # The emergency purge runs at once: the sent series' images go.
            wait_for(
                lambda: queue.get(first_job.id).images_deleted_at is not None, 30, "emergency purge"
            )
            wait_for_problem(node.http_port, "under node.min_free_disk_mb")
            assert echoscu_ok(node.port)
            second = make_phantom_series(tmp_path / "ct2", shape_zyx=(8, 64, 64), seed=2)
            refused = storescu_result(node.port, second.paths)
            refusals = refused.stderr.count("Refused: OutOfResources")
            assert refusals == len(second.paths), refused.stderr
            exit_code, text = _status_text(config)
            assert exit_code == 4 and "under node.min_free_disk_mb" in text, text
            assert node.proc is not None and node.proc.poll() is None  # heartbeat ENOSPC: still up

            # A restart on the full disk comes up in the same refusing state, even when
            # the database was closed cleanly (SQLite then needs space to open it again).
            assert node.stop() == 0
            queue.close()
            filler.unlink()
            SqliteJobQueue(data).close()  # last connection: checkpoint, -wal/-shm removed
            assert not (data / "contourd.db-shm").exists()
            assert (data / "run" / "space.reserve").is_file()
            filler = fill_disk(data)
            env.node = node = RunningNode(config, data).start()
            queue = SqliteJobQueue(data)
            assert echoscu_ok(node.port)
            refused = storescu_result(node.port, second.paths[:1])
            assert "Refused: OutOfResources" in refused.stderr, refused.stderr
            wait_for_problem(node.http_port, "under node.min_free_disk_mb")

            filler.unlink()  # space returns: everything resumes by itself
            wait_for(lambda: healthz(node.http_port)[0] == 200, 30, "/healthz 200 with space back")
            storescu_push(node.port, second.paths)
            wait_for(lambda: len(tps.received()) == 2, 120, f"second sent; log: {node.log_tail()}")
            log_text = node.log_text()
            assert "--- Logging error ---" not in log_text  # no traceback per log line
            assert log_text.count("cannot write the log file") <= 4
    finally:
        unmount(data)
