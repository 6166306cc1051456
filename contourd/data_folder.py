"""The layout of a node's data folder: every path contourd keeps there, named once.

::

    <root>/
      contourd.db              SQLite database (when no ``database`` URL is set)
      spool/                   received instances (daemon.spool)
      results/<job id>/        a job's RTSTRUCT/SEG/preview (+ reviewed/ copies)
      models/                  model packages (model_store.registry)
      logs/contourd.log        the node's log file
      run/config.last-valid.yaml   the workers' copy of the last valid config
      run/space.reserve        1 MiB given back when the disk is full
      node.heartbeat.json      the running node's heartbeat (contourd status)
      web_session.key          the web cookie signing key

Modules ask a :class:`DataFolder` for these paths instead of joining names
themselves, so the layout lives here only. The rows themselves are opened
through :class:`contourd.database.Database` (``DataFolder.db_file`` is its
SQLite file). This module lives in ``contourd/`` because ``daemon`` and
``model_store`` both use it and ``model_store`` must not import ``daemon``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DB_FILENAME = "contourd.db"
"""The SQLite file in the data folder when no ``database`` is set."""


@dataclass(frozen=True)
class DataFolder:
    """The paths of one data folder (nothing is created until a caller writes).

    Parameters
    ----------
    root
        The data folder (``node.data_dir``).
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def db_file(self) -> Path:
        """The SQLite database file."""
        return self.root / DB_FILENAME

    @property
    def spool(self) -> Path:
        """Received instances, one folder per study and series."""
        return self.root / "spool"

    @property
    def results(self) -> Path:
        """The results of every job (one folder each)."""
        return self.root / "results"

    def result_dir(self, job_id: int) -> Path:
        """The folder of one job's outputs."""
        return self.results / str(job_id)

    def reviewed_dir(self, job_id: int) -> Path:
        """Where reviewed structure sets sent back for job ``job_id`` are kept."""
        return self.result_dir(job_id) / "reviewed"

    @property
    def models(self) -> Path:
        """Model packages of the registry."""
        return self.root / "models"

    @property
    def log_file(self) -> Path:
        """The node's log file."""
        return self.root / "logs" / "contourd.log"

    @property
    def run(self) -> Path:
        """Files of the running node (config copy, disk reserve)."""
        return self.root / "run"

    @property
    def last_valid_config(self) -> Path:
        """The supervisor's copy of the last valid config, read by the workers."""
        return self.run / "config.last-valid.yaml"

    @property
    def space_reserve(self) -> Path:
        """The reserve file given back when the disk is full."""
        return self.run / "space.reserve"

    @property
    def heartbeat(self) -> Path:
        """The running node's heartbeat, read by ``contourd status``."""
        return self.root / "node.heartbeat.json"

    @property
    def session_key(self) -> Path:
        """The web cookie signing key."""
        return self.root / "web_session.key"
