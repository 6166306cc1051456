"""Hot reload of the config file: edits take effect without a restart.

:class:`ConfigHolder` keeps the config in use. ``reload_if_changed()`` looks at
the file (modification time and size first, then a sha256 of the bytes);
a changed file that validates replaces ``current``, one that does not is
logged with its errors and the old config stays in use. The daemon calls
``reload_if_changed()`` before routing each completed series (and a
:class:`ConfigWatcher` thread polls it in the background), so a valid new
config applies to every series completed after it was saved.

Routing, destinations, dispatch and retention settings take effect at once;
``node:`` (AE title, port, data folder, TLS) is bound at start and changes
there are logged as needing a restart.

Worker processes never read the operator's file: ``contourd serve`` writes
the bytes of the last valid config to ``<data_dir>/run/config.last-valid.yaml``
(:func:`write_last_valid`) whenever its holder accepts a version, and the
workers hot-reload that copy. A broken edit followed by a worker restart
therefore keeps the workers on the last valid config instead of stopping them.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contourd.data_folder import DataFolder
from contourd.errors import ConfigError
from daemon.config import ContourdConfig, load_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _FileState:
    mtime_ns: int
    size: int
    sha256: str
    data: bytes


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class ConfigHolder:
    """The config in use, reloaded from its file when the file changes.

    Parameters
    ----------
    path
        The config file.
    config
        The config already loaded from ``path``; loaded here when ``None``
        (an invalid file then raises ``ConfigError``: at start there is no
        old config to keep).
    loader
        Function reading a path into a config (``load_config``; tests may
        pass another).
    """

    def __init__(
        self,
        path: Path,
        config: ContourdConfig | None = None,
        *,
        loader: Callable[[Path], ContourdConfig] = load_config,
    ) -> None:
        self.path = Path(path)
        self._loader = loader
        self._lock = threading.Lock()
        self._state = self._read_state()
        self._current = config if config is not None else loader(self.path)
        self._loaded_sha256 = self._state.sha256 if self._state is not None else None
        self._valid_bytes = self._state.data if self._state is not None else None
        self.last_error: str | None = None
        self.generation = 0

    @property
    def current(self) -> ContourdConfig:
        """The config in use now (take it once per series and keep it)."""
        with self._lock:
            return self._current

    def __call__(self) -> ContourdConfig:
        """The config in use now: a holder is a config provider
        (:data:`daemon.config_provider.ConfigProvider`)."""
        return self.current

    @property
    def valid_bytes(self) -> bytes | None:
        """The file's bytes that gave :attr:`current` (``None``: not read from a file)."""
        with self._lock:
            return self._valid_bytes

    def _read_state(self) -> _FileState | None:
        stat = _stat(self.path)
        if stat is None:
            return None
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        return _FileState(stat[0], stat[1], hashlib.sha256(data).hexdigest(), data)

    def reload_if_changed(self) -> bool:
        """Reload the file when its content changed.

        Returns
        -------
        bool
            ``True`` when a new, valid config replaced ``current``; ``False``
            when the file is unchanged, unreadable or invalid (then the old
            config is kept and the error is logged once and kept in
            ``last_error``).
        """
        with self._lock:
            stat = _stat(self.path)
            if stat is None:
                message = f"cannot read config file {self.path}; keeping the config in use"
                if self.last_error != message:
                    self.last_error = message
                    log.error("%s", message)
                return False
            seen = self._state
            if seen is not None and (seen.mtime_ns, seen.size) == stat:
                return False
            state = self._read_state()
            if state is None:
                return False
            self._state = state
            if seen is not None and state.sha256 == seen.sha256:
                return False  # touched, same bytes
            if state.sha256 == self._loaded_sha256:
                self.last_error = None  # edited back to the config in use
                return False
            try:
                new = self._loader(self.path)
            except ConfigError as err:
                self.last_error = str(err)
                log.error(
                    "config file %s was changed but is invalid; keeping the config in use "
                    "(generation %d). %s",
                    self.path,
                    self.generation,
                    err,
                )
                return False
            if new.node != self._current.node:
                log.warning(
                    "config file %s: changes under node: (AE title, port, data folder, TLS) "
                    "take effect after a restart of contourd",
                    self.path,
                )
            self._current = new
            self._loaded_sha256 = state.sha256
            self._valid_bytes = state.data
            self.last_error = None
            self.generation += 1
            log.info(
                "config file %s reloaded (generation %d, %d rules)",
                self.path,
                self.generation,
                len(new.rules),
            )
            return True


class ConfigWatcher:
    """A background thread calling ``holder.reload_if_changed()`` every ``interval_s``."""

    def __init__(self, holder: ConfigHolder, interval_s: float = 2.0) -> None:
        self.holder = holder
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop polling and wait up to ``timeout_s`` for the thread to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.holder.reload_if_changed()
            except Exception:  # boundary: a watcher bug must not stop the daemon
                log.exception("config watcher failed; will retry")


def write_last_valid(holder: ConfigHolder, data_dir: Path) -> Path | None:
    """Write the holder's last valid config bytes to the data folder, atomically.

    Returns the path, or ``None`` when it could not be written (full disk):
    then a stale copy is removed so that workers fall back to the operator's
    file, which was valid when ``serve`` loaded it.
    """
    path = DataFolder(data_dir).last_valid_config
    data = holder.valid_bytes
    if data is None:
        return None
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as err:
        log.error("cannot write the workers' copy of the config to %s: %s", path, err)
        tmp.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        return None
    return path
