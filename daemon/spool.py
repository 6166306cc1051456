"""The spool: received instances on disk, written durably, keyed by validated UIDs.

Layout under ``<data_dir>/spool``::

    <StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm

Every file is written to a hidden temp file in its final folder, renamed into
place with :func:`os.replace`, then (``fsync=True``) fsynced through the still
open descriptor before :meth:`Spool.store` returns. One fsync per instance:
on ext4, XFS and btrfs a file's fsync also commits the rename that preceded it
(global journal / inode log). New folders are fsynced once when created; with
``fsync_directory=True`` the folder is fsynced after every rename as well (strict
POSIX, about twice the cost per instance).

What this means after a crash: a file that was acknowledged is complete on
disk. A power loss *during* a store can leave a short file under its final
name that was never acknowledged; it has no database row, and the node checks
every row-less file at start and deletes incomplete ones
(:func:`daemon.received_dataset.check_complete`). A crash can also leave
``.*.tmp`` files; :meth:`Spool.remove_temp_files` deletes them at start.

A UID is used as a path component only after :func:`validate_uid` accepted it.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from contourd.errors import InvalidUIDError, SpoolError

log = logging.getLogger(__name__)

# Digits separated by single dots, no empty component. Leading zeros in a
# component break PS3.5 9.1, but some older scanners emit them; they are still
# path-safe, so they are tolerated (logged at debug level).
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_STRICT_COMPONENT_RE = re.compile(r"^(0|[1-9][0-9]*)$")
MAX_UID_LENGTH = 64
TEMP_SUFFIX = ".tmp"
INSTANCE_SUFFIX = ".dcm"


def validate_uid(value: object, what: str) -> str:
    """Return ``value`` as a UID string, or raise if it is not a valid UID.

    Parameters
    ----------
    value
        The candidate UID (a trailing NUL or space padding byte is removed).
    what
        The attribute name, for the error message (e.g. ``"SeriesInstanceUID"``).

    Raises
    ------
    InvalidUIDError
        If the value is missing, longer than 64 characters or holds anything
        other than digits separated by single dots.
    """
    if value is None:
        raise InvalidUIDError(
            f"{what} is missing; expected a DICOM UID such as 1.2.840.10008.1.1; "
            "fix the sending system's export so every instance carries one"
        )
    text = str(value).rstrip("\x00 ")
    if not text or len(text) > MAX_UID_LENGTH or not _UID_RE.match(text):
        shown = text[:80].encode("ascii", "backslashreplace").decode("ascii")
        raise InvalidUIDError(
            f"{what} {shown!r} is not a valid DICOM UID; expected 1 to "
            f"{MAX_UID_LENGTH} characters of digits separated by single dots; "
            "the instance was refused, fix the UID at the sending system"
        )
    if not all(_STRICT_COMPONENT_RE.match(part) for part in text.split(".")):
        log.debug("%s %s has a component with a leading zero (tolerated)", what, text)
    return text


@dataclass(frozen=True)
class StoredInstance:
    """An instance that is on disk under its final name.

    Attributes
    ----------
    path : Path
        Absolute path of the ``.dcm`` file.
    size_bytes : int
        File size in bytes (file meta included).
    """

    path: Path
    size_bytes: int


class Spool:
    """The folder tree of received instances.

    Parameters
    ----------
    root
        The spool folder (normally ``<data_dir>/spool``); created if missing.
    fsync
        When ``True`` (default) each file is fsynced before :meth:`store`
        returns, so an acknowledged instance survives power loss.
    fsync_directory
        Also fsync the folder after every rename (strict POSIX durability).
    """

    def __init__(self, root: Path, *, fsync: bool = True, fsync_directory: bool = False) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.fsync_directory = fsync and fsync_directory
        self.root.mkdir(parents=True, exist_ok=True)

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        """Folder of one series; both UIDs are validated first."""
        study = validate_uid(study_uid, "StudyInstanceUID")
        series = validate_uid(series_uid, "SeriesInstanceUID")
        return self.root / study / series

    def instance_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Final path of one instance; every UID is validated first."""
        sop = validate_uid(sop_instance_uid, "SOPInstanceUID")
        return self.series_dir(study_uid, series_uid) / f"{sop}{INSTANCE_SUFFIX}"

    def store(
        self, study_uid: str, series_uid: str, sop_instance_uid: str, parts: list[bytes]
    ) -> StoredInstance:
        """Write one instance durably and return where it is.

        Parameters
        ----------
        study_uid, series_uid, sop_instance_uid
            UIDs that key the path (validated here).
        parts
            The file's bytes in order (e.g. preamble + file meta, then the data
            set exactly as received); written without being joined.

        Raises
        ------
        InvalidUIDError
            If a UID is not valid (nothing is written).
        SpoolError
            If the file cannot be written, flushed or renamed (disk full,
            permissions); the temp file is removed.
        """
        final = self.instance_path(study_uid, series_uid, sop_instance_uid)
        temp = final.parent / f".{final.stem}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
        try:
            if not final.parent.is_dir():
                final.parent.mkdir(parents=True, exist_ok=True)
                if self.fsync:  # make the new folders' entries durable too
                    _fsync_dir(final.parent.parent)
                    _fsync_dir(self.root)
            with open(temp, "wb") as handle:
                for part in parts:
                    handle.write(part)
                handle.flush()
                os.replace(temp, final)
                temp = final  # nothing left to clean up under the temp name
                if self.fsync:
                    os.fsync(handle.fileno())  # data, inode and (ext4/XFS/btrfs) the rename
            if self.fsync_directory:
                _fsync_dir(final.parent)
        except OSError as err:
            try:
                temp.unlink(missing_ok=True)  # the temp file, or the unsynced final file
            except OSError:
                log.warning("could not remove temp file %s after a failed write", temp)
            raise SpoolError(
                f"cannot store instance {sop_instance_uid} at {final}: {err}; "
                "check free space and permissions of the data folder"
            ) from err
        return StoredInstance(path=final, size_bytes=sum(len(p) for p in parts))

    def remove_temp_files(self) -> int:
        """Delete half-written temp files left by a crash; return how many."""
        removed = 0
        for path in self.root.glob(f"*/*/.*{TEMP_SUFFIX}"):
            try:
                path.unlink()
                removed += 1
            except OSError as err:
                log.warning("cannot remove stale temp file %s: %s", path, err)
        return removed

    def iter_instances(self) -> Iterator[tuple[str, str, str, Path]]:
        """Yield ``(study_uid, series_uid, sop_instance_uid, path)`` of every file.

        Folders or files whose names are not valid UIDs are skipped (logged).
        """
        for path in sorted(self.root.glob(f"*/*/*{INSTANCE_SUFFIX}")):
            if path.name.startswith("."):
                continue
            study, series, sop = path.parent.parent.name, path.parent.name, path.stem
            try:
                validate_uid(study, "study folder")
                validate_uid(series, "series folder")
                validate_uid(sop, "file name")
            except InvalidUIDError as err:
                log.warning("ignoring %s in the spool: %s", path, err)
                continue
            yield study, series, sop, path

    def free_disk_mb(self) -> float:
        """Free space on the spool's file system in MiB (for the disk guard)."""
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize / (1024 * 1024)


def _fsync_dir(path: Path) -> None:
    """fsync a folder so a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
