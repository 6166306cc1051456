"""The worker processes of one host: started, watched, restarted when they die.

:class:`WorkerPool` runs ``worker.processes`` ``contourd worker`` processes
(``python -m daemon worker``). A supervising thread looks at them every
:data:`WORKER_RESTART_DELAY_S` seconds; one that exited is reported to
``on_exit`` (``contourd serve`` releases its leases there, so its job is taken
up again at once) and started again under the same name. Workers read the
supervisor's copy of the last valid config (``--config-copy``).
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

WORKER_RESTART_DELAY_S = 1.0
"""Seconds between looks at the worker processes (and before a restart)."""


class WorkerPool:
    """Starts ``contourd worker`` processes and restarts the ones that die.

    Parameters
    ----------
    count
        Number of worker processes.
    config_path
        Passed on as ``-c`` (``None``: the workers use the embedded defaults).
    config_copy
        The supervisor's copy of the last valid config (``--config-copy``).
    on_exit
        Called with a worker's name when the supervisor sees it exit, before
        it is restarted (``contourd serve`` releases the worker's leases).
    """

    def __init__(
        self,
        count: int,
        config_path: Path | None,
        *,
        config_copy: Path | None = None,
        on_exit: Callable[[str], None] | None = None,
    ) -> None:
        self.count = count
        self.config_path = config_path
        self.config_copy = config_copy
        self.on_exit = on_exit
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts = 0
        self._restart_times: collections.deque[float] = collections.deque(maxlen=1000)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="workers", daemon=True)

    def _spawn(self, name: str) -> None:
        cmd = [sys.executable, "-m", "daemon", "worker", "--id", name]
        if self.config_path is not None:
            cmd += ["-c", str(self.config_path)]
            if self.config_copy is not None:
                cmd += ["--config-copy", str(self.config_copy)]
        self.procs[name] = subprocess.Popen(cmd)
        log.info("worker %s started (pid %d)", name, self.procs[name].pid)

    def start(self) -> None:
        """Start the workers and the supervising thread."""
        with self._lock:
            for i in range(self.count):
                self._spawn(f"worker-{socket.gethostname()}-{os.getpid()}-{i + 1}")
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(WORKER_RESTART_DELAY_S):
            with self._lock:
                for name, proc in list(self.procs.items()):
                    code = proc.poll()
                    if code is not None and not self._stopping.is_set():
                        log.error(
                            "worker %s (pid %d) exited with %s; restarting", name, proc.pid, code
                        )
                        self._exited(name, proc.pid, code)
                        self.restarts += 1
                        self._restart_times.append(time.monotonic())
                        self._spawn(name)

    def _exited(self, name: str, pid: int, code: int) -> None:
        if self.on_exit is None:
            return
        try:
            self.on_exit(name)
        except Exception:  # boundary: the leases then run out by themselves
            log.exception("could not release the leases of worker %s (pid %d)", name, pid)

    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        with self._lock:
            return [p.pid for p in self.procs.values()]

    def alive(self) -> bool:
        """Whether every worker process runs."""
        return self.alive_count() == len(self.procs)

    def restarts_within(self, window_s: float) -> int:
        """Restarts in the last ``window_s`` seconds (a crash loop shows here)."""
        since = time.monotonic() - window_s
        with self._lock:
            return sum(t >= since for t in self._restart_times)

    def alive_count(self) -> int:
        """How many worker processes run now."""
        with self._lock:
            return sum(p.poll() is None for p in self.procs.values())

    def stop(self, *, graceful: bool = True, timeout_s: float | None = None) -> None:
        """SIGTERM every worker (each finishes its job) and wait; SIGKILL when not graceful."""
        self._stopping.set()
        with self._lock:
            for proc in self.procs.values():
                if proc.poll() is None:
                    if graceful:
                        proc.send_signal(signal.SIGTERM)
                    else:
                        proc.kill()
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
