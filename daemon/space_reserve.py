"""A small file that keeps disk space for the node's own database.

SQLite needs a little space just to open a WAL database (its ``-shm`` index,
32 KiB, and the first ``-wal`` frames). On a completely full disk a restart
would then fail with "disk I/O error" and the node would sit in a restart
loop. ``contourd serve`` therefore keeps :data:`RESERVE_BYTES` allocated in
``<data_dir>/run/space.reserve`` while there is room, and deletes it when the
database cannot be opened, so the node comes up (and refuses images with
0xA700) instead of exiting. The reserve is made again once free space is
back above the disk floor.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from contourd.data_folder import DataFolder

log = logging.getLogger(__name__)

RESERVE_BYTES = 1 << 20
"""1 MiB: room for the database's shared-memory index and a few transactions."""


class SpaceReserve:
    """The reserve file of one data folder.

    Parameters
    ----------
    data_dir
        The data folder.
    size_bytes
        Size of the reserve.
    """

    def __init__(self, data_dir: Path, size_bytes: int = RESERVE_BYTES) -> None:
        self.data_dir = Path(data_dir)
        self.path = DataFolder(self.data_dir).space_reserve
        self.size_bytes = size_bytes

    def release(self) -> bool:
        """Delete the reserve; True when there was one to give back."""
        try:
            size = self.path.stat().st_size
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning(
            "released the %d KiB disk reserve %s so the database can work on a full disk",
            size // 1024,
            self.path,
        )
        return size > 0

    def ensure(self, floor_mb: float) -> bool:
        """Make the reserve when it is missing and free space stays above ``floor_mb``.

        Returns True when the reserve exists afterwards; never raises.
        """
        if self.path.is_file() and self.path.stat().st_size >= self.size_bytes:
            return True
        free_bytes = shutil.disk_usage(self.data_dir).free
        if free_bytes - self.size_bytes < floor_mb * 2**20:
            return False
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size_bytes)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            log.warning("cannot make the disk reserve %s: %s", self.path, err)
            return False
        return True
