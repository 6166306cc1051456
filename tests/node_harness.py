"""A contourd node under test: ``contourd serve`` with a DCMTK storescp as its TPS.

The one place the end-to-end tests (``tests/ops``) get a running node from:
:func:`node_with_tps` writes the node config, approves the built-in body
model, adds web users, starts storescp and ``contourd serve`` on free ports and
stops both when the block ends. The pieces (:class:`StoreScp`,
:class:`RunningNode`, :func:`node_config_file`, :func:`storescu_push`,
:func:`healthz`) are here too for tests that need finer control.

``tests/conftest.py`` puts this folder on ``sys.path``, so tests import it as
``node_harness`` (a top-level module, so ``tests/ops`` and ``tests/receive``
never clash over a ``conftest`` module name).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import yaml
from peer_tools import free_port, require_tool, wait_for

from daemon.job_queue import DatabaseJobQueue, SqliteJobQueue
from inference.phantom import PhantomSeries, make_phantom_series

#: Password of the web users :func:`node_with_tps` adds (tests may pass their own).
USER_PASSWORD = "a long test password"


class StoreScp:
    """DCMTK ``storescp`` playing the planning system, on a free loopback port.

    Received files land in ``out_dir``; :meth:`received` reads their SOP
    Instance UIDs. ``extra_args`` go to storescp before the others (for
    example ``("--sleep-after", "60")`` for a TPS slow to release).
    """

    def __init__(
        self,
        out_dir: Path,
        ae_title: str = "TPS",
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = require_tool("storescp", "dcmtk")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreScp:
        self.proc = subprocess.Popen(
            [
                self.binary,
                *self.extra_args,
                "-aet",
                self.ae_title,
                "-od",
                str(self.out_dir),
                "+uf",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, 10, f"storescp listening on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def received(self) -> list[pydicom.Dataset]:
        """Every file storescp has finished writing so far, fully read.

        storescp writes straight to the final file name, so a file that is
        still being written does not parse yet; it is left for the next call.
        """
        done = []
        for path in sorted(self.out_dir.iterdir()):
            if not path.is_file():
                continue
            try:
                done.append(pydicom.dcmread(path))
            except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError):
                continue
        return done

    def __enter__(self) -> StoreScp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RunningNode:
    """``contourd serve`` in a subprocess on free ports, with its data folder."""

    def __init__(self, config_path: Path, data_dir: Path, *extra_args: str) -> None:
        self.config_path = config_path
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.http_port = 0
        self.log_path = config_path.parent / "serve.log"

    def start(self, timeout_s: float = 60) -> RunningNode:
        """Start the node; returns once it printed both ports (``timeout_s`` at most)."""
        self._log = open(self.log_path, "a")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daemon",
                "serve",
                "-c",
                str(self.config_path),
                "--port",
                "0",
                "--http-port",
                "0",
                *self.extra_args,
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not (self.port and self.http_port):
            line = self.proc.stdout.readline()  # blocks until serve prints or exits
            if not line:
                raise AssertionError(f"contourd serve exited early; log: {self.log_text()}")
            if line.startswith("contourd listening on port"):
                self.port = int(line.split()[-1])
            elif line.startswith("contourd http on port"):
                self.http_port = int(line.split()[-1])
        return self

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the node's log, for wait messages (``"...; log: ..."``)."""
        return self.log_text()[-chars:]

    def worker_pids(self) -> list[int]:
        beat = json.loads((self.data_dir / "node.heartbeat.json").read_text())
        return list(beat["worker_pids"])

    def stop(self) -> int | None:
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                code = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        elif self.proc is not None:
            code = self.proc.returncode
        self.proc = None
        if hasattr(self, "_log"):
            self._log.close()
        return code


def storescu_push(port: int, files: list[Path], calling_ae: str = "SCANNER") -> None:
    """Push ``files`` to 127.0.0.1:``port`` with DCMTK storescu; raise on failure."""
    binary = require_tool("storescu", "dcmtk")
    result = subprocess.run(
        [binary, "-aet", calling_ae, "-aec", "CONTOURD", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise AssertionError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")


def patch_config(path: Path, **sections: dict[str, Any]) -> Path:
    """Merge ``sections`` (``dispatch={...}``) into the YAML config at ``path``."""
    data = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(data))
    return path


def node_config_file(
    tmp_path: Path,
    tps_port: int,
    *,
    max_attempts: int = 20,
    workers: int = 1,
    outputs: tuple[str, ...] = ("rtstruct",),
    database: str | None = None,
    rule: Mapping[str, Any] | None = None,
    **sections: dict[str, Any],
) -> Path:
    """A config for an end-to-end node: CT -> body model -> ``outputs`` -> storescp 'tps'.

    ``rule`` updates the one rule; ``sections`` (``worker={"lease_s": 90}``)
    are merged into the config's sections as :func:`patch_config` does.
    """
    path = tmp_path / "contourd.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                **({"database": database} if database else {}),
                "node": {"data_dir": "data", "fsync": False, "min_free_disk_mb": 0},
                "series": {"complete_on": "association_release", "complete_after_s": 30},
                "destinations": {"tps": {"ae_title": "TPS", "host": "127.0.0.1", "port": tps_port}},
                "dispatch": {
                    "max_attempts": max_attempts,
                    "retry_initial_s": 0.5,
                    "retry_max_s": 1.0,
                    "poll_interval_s": 0.2,
                    "connect_timeout_s": 2,
                },
                "worker": {"processes": workers, "lease_s": 3.0, "poll_interval_s": 0.1},
                "retention": {"emergency_free_disk_mb": 0},
                "http": {"host": "127.0.0.1", "port": 0},
                "rules": [
                    {
                        "name": "ct-body",
                        "match": {"modality": "CT"},
                        "model": "body",
                        "send_to": ["tps"],
                        "outputs": list(outputs),
                        **(rule or {}),
                    }
                ],
            }
        )
    )
    return patch_config(path, **sections)


def approve_body_model(data_dir: Path, database_url: str | None = None) -> None:
    """Approve the built-in ``body`` model in a throwaway data folder (and database)."""
    from contourd.database import Database
    from model_store.registry import ModelRegistry

    registry = ModelRegistry(data_dir, database=Database(data_dir, database_url))
    try:
        registry.approve("body", "1.0.0", by="ops-test", note="test data folder")
    finally:
        registry.close()


def add_web_users(data_dir: Path, roles: Mapping[str, str], password: str) -> None:
    """Add web users (name -> role) with ``password`` to the data folder's database."""
    from daemon.job_queue import DB_FILENAME
    from daemon.web.users import UserStore

    data_dir.mkdir(parents=True, exist_ok=True)
    users = UserStore(data_dir / DB_FILENAME)
    for name, role in roles.items():
        users.set_user(name, role, password)


def healthz(http_port: int) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of ``GET /healthz``."""
    url = f"http://127.0.0.1:{http_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback)
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def node_metrics(http_port: int) -> bytes:
    """The body of ``GET /metrics`` (an HTTP error status raises)."""
    url = f"http://127.0.0.1:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback)
        return resp.read()


def wait_for_problem(http_port: int, words: str, timeout_s: float = 60) -> list[str]:
    """Wait until /healthz answers 503 with a problem containing ``words``."""

    def found() -> list[str] | None:
        code, body = healthz(http_port)
        hits = [p for p in body.get("problems", []) if words in p]
        return body["problems"] if code == 503 and hits else None

    return wait_for(found, timeout_s, f"/healthz 503 naming {words!r}")  # type: ignore[return-value]


def latest_state(queue: DatabaseJobQueue) -> str | None:
    """State of the newest job in ``queue`` (``None`` before the first job)."""
    jobs = queue.recent(1)
    return jobs[0].state.value if jobs else None


def push_until_running(
    tmp_path: Path, node: RunningNode, shape_zyx: tuple[int, int, int] = (60, 256, 256)
) -> tuple[SqliteJobQueue, PhantomSeries]:
    """Push a phantom CT to ``node`` and wait until its job is ``running``.

    The default series is big enough that the body model runs for a while on
    a busy 2-core machine, so a test can stop or kill the worker mid-job.
    Returns the node's queue and the series.
    """
    queue = SqliteJobQueue(node.data_dir)
    series = make_phantom_series(tmp_path / "ct", shape_zyx=shape_zyx)
    storescu_push(node.port, series.paths)
    wait_for(lambda: latest_state(queue) == "running", 60, f"job running; log: {node.log_tail()}")
    return queue, series


@dataclass
class NodeUnderTest:
    """What :func:`node_with_tps` yields; ``node`` may be replaced (a restart)."""

    tps: StoreScp
    node: RunningNode
    config: Path
    data_dir: Path


@contextmanager
def node_with_tps(
    tmp_path: Path,
    *,
    tps: StoreScp | None = None,
    start_tps: bool = True,
    approve: bool = True,
    users: Mapping[str, str] | None = None,
    password: str = USER_PASSWORD,
    write_config: Callable[[int], Path] | None = None,
    prepare: Callable[[Path], None] | None = None,
    database: str | None = None,
    node_args: Sequence[str] = (),
    **config_options: Any,
) -> Iterator[NodeUnderTest]:
    """A started ``contourd serve`` sending to a storescp TPS, both stopped at the end.

    Parameters
    ----------
    tmp_path
        The test's folder: config ``contourd.yaml``, data folder ``data``, TPS ``tps``.
    tps
        The TPS to use (default a plain :class:`StoreScp` in ``tmp_path / "tps"``).
    start_tps
        Start the TPS first (False: the TPS is down until the test starts it).
    approve
        Approve the built-in body model in the data folder (and ``database``).
    users, password
        Web users to add (name -> role), all with ``password``.
    write_config
        Writes the config for a TPS port and returns its path; default
        :func:`node_config_file` with ``database`` and ``config_options``.
    prepare
        Called with the data folder before the node starts (import models, ...).
    database
        PostgreSQL URL for the node's rows (default SQLite in the data folder).
    node_args
        Extra ``contourd serve`` arguments (``("--role", "receive")``).
    """
    tps = tps or StoreScp(tmp_path / "tps")
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if write_config is None:
        config = node_config_file(tmp_path, tps.port, database=database, **config_options)
    else:
        config = write_config(tps.port)
    if approve:
        approve_body_model(data_dir, database)
    if users:
        add_web_users(data_dir, users, password)
    if prepare is not None:
        prepare(data_dir)
    running = NodeUnderTest(tps, RunningNode(config, data_dir, *node_args), config, data_dir)
    try:
        if start_tps:
            tps.start()
        running.node.start()
        yield running
    finally:
        running.node.stop()
        running.tps.stop()
