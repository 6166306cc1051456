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

from pathlib import Path

DB_FILENAME = "contourd.db"
"""The SQLite file in the data folder when no ``database`` is set."""


class DataFolder:
    """The paths of one data folder (nothing is created until a caller writes).

    Parameters
    ----------
    root
        The data folder (``node.data_dir``).

    Attributes
    ----------
    root
        The data folder.
    db_file
        The SQLite database file (opened only through
        :class:`contourd.database.Database` or :func:`contourd.database.connect_sqlite`).
    spool
        Received instances, one folder per study and series.
    results
        Every job's outputs, one folder each (:meth:`result_dir`).
    models
        Model packages of the registry.
    log_file
        The node's log file.
    run
        Files of the running node (config copy, disk reserve).
    last_valid_config
        The supervisor's copy of the last valid config, read by the workers.
    space_reserve
        The reserve file given back when the disk is full.
    heartbeat
        The running node's heartbeat, read by ``contourd status``.
    session_key
        The web cookie signing key.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.db_file = self.root / DB_FILENAME
        self.spool = self.root / "spool"
        self.results = self.root / "results"
        self.models = self.root / "models"
        self.log_file = self.root / "logs" / "contourd.log"
        self.run = self.root / "run"
        self.last_valid_config = self.run / "config.last-valid.yaml"
        self.space_reserve = self.run / "space.reserve"
        self.heartbeat = self.root / "node.heartbeat.json"
        self.session_key = self.root / "web_session.key"

    def __repr__(self) -> str:
        return f"DataFolder({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataFolder) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def result_dir(self, job_id: int) -> Path:
        """The folder of one job's outputs."""
        return self.results / str(job_id)

    def reviewed_dir(self, job_id: int) -> Path:
        """Where reviewed structure sets sent back for job ``job_id`` are kept."""
        return self.result_dir(job_id) / "reviewed"
