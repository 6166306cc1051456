"""The data folder's layout, the one way the database is opened, and hot reload
through config providers (daemon/service.py, contourd/data_folder.py)."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from conftest import FakeCompletion

from contourd.data_folder import DataFolder
from contourd.database import Database
from daemon.config import load_config
from daemon.config_watcher import ConfigHolder, write_last_valid
from daemon.dispatch import Dispatcher
from daemon.feedback_store import FeedbackStore
from daemon.health_http import write_heartbeat
from daemon.job_queue import DeliveryState, JobState, SqliteJobQueue
from daemon.retention import EMERGENCY_PURGE_INTERVAL_S, Retention, RetentionSchedule
from daemon.service import Service
from daemon.space_reserve import SpaceReserve
from daemon.web.context import session_secret
from daemon.web.users import UserStore
from model_store.registry import ModelRegistry

CONFIG = """\
node: {{data_dir: data}}
retention: {{delete_images_after_h: {age_h}, check_interval_s: 300}}
dispatch: {{max_attempts: {attempts}}}
"""


def write(path: Path, age_h: float = 72, attempts: int = 8) -> None:
    """Write the config and move the mtime forward so a same-second rewrite is seen."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(CONFIG.format(age_h=age_h, attempts=attempts), encoding="utf-8")
    if path.stat().st_mtime_ns <= before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def finished_series(queue: SqliteJobQueue, n: int) -> Path:
    """A series whose only job is finished (not routed); returns its spool folder."""
    folder = DataFolder(queue.data_dir).spool / "1.2.9" / f"1.2.9.{n}"
    folder.mkdir(parents=True)
    path = folder / "1.dcm"
    path.write_bytes(b"x" * 100)
    job_id = queue.submit_series(
        FakeCompletion(series_uid=f"1.2.9.{n}", spool_dir=folder, instance_paths=[path])
    )
    queue.claim("w", lease_s=60)
    queue.transition(job_id, JobState.NOT_ROUTED, worker_id="w", message="no rule matched")
    return folder


def written_job(queue: SqliteJobQueue, n: int) -> int:
    """A job with a result file, waiting to be sent to ``tps``."""
    job_id = queue.submit_series(FakeCompletion(series_uid=f"1.2.8.{n}"))
    queue.claim("w", lease_s=60)
    queue.transition(job_id, JobState.ROUTED, worker_id="w")
    queue.transition(job_id, JobState.RUNNING, worker_id="w")
    result = DataFolder(queue.data_dir).result_dir(job_id) / "RS.dcm"
    result.parent.mkdir(parents=True)
    result.write_bytes(b"r")
    queue.add_deliveries(job_id, ["tps"])
    queue.transition(
        job_id, JobState.WRITTEN, worker_id="w", release_lease=True, result_files=[result]
    )
    return job_id


def test_every_module_takes_its_paths_from_the_data_folder(tmp_path: Path) -> None:
    folder = DataFolder(tmp_path)
    assert folder.db_file == tmp_path / "contourd.db"
    assert folder.result_dir(7) == tmp_path / "results" / "7"
    assert folder.reviewed_dir(7) == tmp_path / "results" / "7" / "reviewed"
    assert Database(tmp_path).sqlite_path == folder.db_file
    assert SpaceReserve(tmp_path).path == folder.space_reserve
    write_heartbeat(tmp_path, {"port": 1})
    assert folder.heartbeat.is_file()
    session_secret(tmp_path)
    assert folder.session_key.is_file()
    with ModelRegistry(tmp_path, builtin_dir=None) as registry:
        assert registry.models_dir == folder.models
    config = tmp_path / "contourd.yaml"
    write(config)
    assert write_last_valid(ConfigHolder(config), tmp_path) == folder.last_valid_config
    assert folder.last_valid_config.read_bytes() == config.read_bytes()


def test_every_sqlite_connection_is_opened_one_way(tmp_path: Path) -> None:
    queue = SqliteJobQueue(tmp_path)
    registry = ModelRegistry(tmp_path, builtin_dir=None)
    users = UserStore(Database(tmp_path))
    feedback = FeedbackStore(tmp_path)
    connections: dict[str, sqlite3.Connection] = {
        "queue": queue.conn.raw,
        "registry": registry.conn.raw,
        "users": users._conn.raw,
        "feedback": feedback._conn,
    }
    for name, conn in connections.items():
        settings = [
            conn.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("journal_mode", "synchronous", "busy_timeout")
        ]
        assert settings == ["wal", 1, 30000], name  # synchronous 1 = NORMAL
    assert {
        Path(conn.execute("PRAGMA database_list").fetchone()[2]) for conn in connections.values()
    } == {DataFolder(tmp_path).db_file.resolve()}


def test_web_users_live_in_the_node_database(tmp_path: Path, backend: str | None) -> None:
    database = Database(tmp_path, backend)
    store = UserStore(database)
    store.set_user("alice", "operator", "correct horse")
    store.set_user("bob", "viewer", None)
    store.set_user("alice", "physicist", None)  # None keeps the password
    other = UserStore(Database(tmp_path, backend))  # another process or receiver
    assert other.authenticate("alice", "correct horse").role == "physicist"
    assert [u.name for u in other.list_users()] == ["alice", "bob"]
    assert other.get("carol") is None
    assert store.remove("bob") and not store.remove("bob")
    assert [u.name for u in other.list_users()] == ["alice"]


def test_retention_follows_a_reloaded_config_through_its_provider(tmp_path: Path) -> None:
    path = tmp_path / "contourd.yaml"
    write(path, age_h=72)
    holder = ConfigHolder(path)
    queue = SqliteJobQueue(holder().data_dir)
    folder = finished_series(queue, 1)
    retention = Retention(queue, lambda: holder().retention)
    two_hours_later = time.time() + 2 * 3600
    assert retention.run_once(now=two_hours_later).series_purged == []
    write(path, age_h=1)
    assert holder.reload_if_changed()
    assert retention.run_once(now=two_hours_later).series_purged == ["1.2.9.1"]
    assert not folder.exists()


def test_dispatcher_follows_a_reloaded_config_through_its_provider(tmp_path: Path) -> None:
    path = tmp_path / "contourd.yaml"
    write(path, attempts=8)
    holder = ConfigHolder(path)
    queue = SqliteJobQueue(holder().data_dir)
    dispatcher = Dispatcher(queue, lambda: {}, lambda: holder().dispatch)  # "tps" is not configured
    first = written_job(queue, 1)
    dispatcher.drain(job_id=first)
    assert queue.deliveries(first)[0].state == DeliveryState.PENDING  # retried later
    write(path, attempts=1)
    assert holder.reload_if_changed()
    second = written_job(queue, 2)
    dispatcher.drain(job_id=second)
    assert queue.deliveries(second)[0].state == DeliveryState.FAILED  # no retry left
    assert "not in the config's destinations" in (queue.deliveries(second)[0].last_error or "")


def test_retention_schedule_runs_at_start_every_interval_and_often_in_an_emergency(
    tmp_path: Path,
) -> None:
    free_mb = {"now": 10_000.0}
    clock = {"now": 1000.0}
    config = load_config(None).retention  # check every 300 s, floor 2048 MiB
    retention = Retention(SqliteJobQueue(tmp_path), config, free_disk_mb=lambda: free_mb["now"])
    schedule = RetentionSchedule(retention, clock_s=lambda: clock["now"])
    passes: list[float] = []

    def tick_at(t: float) -> None:
        clock["now"] = t
        before = (schedule.next_at, schedule.next_emergency_at)
        schedule.tick()
        if (schedule.next_at, schedule.next_emergency_at) != before:
            passes.append(t)

    tick_at(1000.0)  # at start
    tick_at(1010.0)  # not due
    free_mb["now"] = 100.0  # under the emergency floor: a pass at once...
    tick_at(1011.0)
    tick_at(1011.0 + EMERGENCY_PURGE_INTERVAL_S / 2)  # ...then not before the interval
    tick_at(1011.0 + EMERGENCY_PURGE_INTERVAL_S)
    free_mb["now"] = 10_000.0
    tick_at(1200.0)  # space is back: the normal interval again
    tick_at(1000.0 + config.check_interval_s)
    assert passes == [1000.0, 1011.0, 1011.0 + EMERGENCY_PURGE_INTERVAL_S, 1300.0]


def _service(tmp_path: Path, role: str) -> tuple[Service, Path, Callable[[], bytes]]:
    tmp_path.mkdir()
    path = tmp_path / "contourd.yaml"
    write(path)
    config = load_config(path)
    config.worker.processes = 0
    service = Service(config, config_path=path, role=role)
    return service, path, service.folder.last_valid_config.read_bytes


def test_service_keeps_the_workers_config_copy_current_in_every_role(tmp_path: Path) -> None:
    for role in ("work", "receive"):
        service, path, copy = _service(tmp_path / role, role)
        try:
            assert copy() == path.read_bytes()
            write(path, attempts=2)
            assert service.holder is not None and service.holder.reload_if_changed()
            assert service.config().dispatch.max_attempts == 2
            assert service.dispatcher.config.max_attempts == 2  # asked, not assigned
            service.tick()
            assert copy() == path.read_bytes()
        finally:
            service.stop()


def test_release_hook_sees_the_ae_titles_so_it_picks_the_rule_the_worker_picks(
    tmp_path: Path,
) -> None:
    """A rule on ``calling_ae`` that completes at association release: the hook
    gets the association's AE titles from the assembler, so a series from that
    sender completes at release and one from another sender does not."""
    from pydicom.dataset import Dataset

    from daemon.series_assembler import SeriesAssembler, _OpenSeries
    from daemon.service import release_hook

    config_file = tmp_path / "contourd.yaml"
    config_file.write_text(
        f"node: {{data_dir: {tmp_path / 'data'}}}\n"
        "rules:\n"
        "  - name: sim-ct\n"
        "    match: {modality: CT, calling_ae: CT_SIM}\n"
        "    model: body\n"
        "    complete_on: association_release\n"
        "  - name: other-ct\n"
        "    match: {modality: CT}\n"
        "    model: body\n",
        encoding="utf-8",
    )
    config = load_config(config_file)
    hook = release_hook(lambda: config)
    header = Dataset()
    header.Modality = "CT"

    def open_series(calling_ae: str) -> _OpenSeries:
        row = {"calling_ae": calling_ae, "called_ae": "CONTOURD"}
        return _OpenSeries("1.2.3", 1, header, row, 0.0, sop_uids={"1", "2"})

    from_sim = SeriesAssembler._attributes_so_far(open_series("CT_SIM"))
    assert (from_sim.calling_ae, from_sim.called_ae, from_sim.num_images) == (
        "CT_SIM",
        "CONTOURD",
        2,
    )
    assert hook(from_sim) is True
    assert hook(SeriesAssembler._attributes_so_far(open_series("PACS"))) is False
