"""The receiving node: spool + database + series assembler + storage SCP, wired.

``ReceiveNode(config, on_series_complete).start()`` rebuilds state from the
spool and the database (temp files removed, files without a row indexed,
receiving series re-armed, unsent completions re-emitted with reason
``restart``), then starts the timers and the SCP. ``stop()`` ends both.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dsutils import split_dataset

from contourd.data_folder import DataFolder
from daemon.config import ContourdConfig
from daemon.instance_db import InstanceDB
from daemon.received_dataset import check_complete
from daemon.scp import StorageSCP
from daemon.series_assembler import (
    CompletionCallback,
    InstanceArrival,
    ReleaseHook,
    SeriesAssembler,
)
from daemon.spool import Spool

log = logging.getLogger(__name__)


class ReceiveNode:
    """Starts and stops everything on the receive side.

    Parameters
    ----------
    config
        The whole configuration (``node:`` and ``series:`` are used).
    on_series_complete
        Called once per completed series version (at least once: de-duplicate
        by ``(series_uid, version)``); returning normally marks it handed off.
    complete_on_release
        Optional hook ``(first_header) -> bool``: complete that series when
        its association is released (routing's per-rule ``complete_on``).
    """

    def __init__(
        self,
        config: ContourdConfig,
        on_series_complete: CompletionCallback,
        *,
        complete_on_release: ReleaseHook | None = None,
    ) -> None:
        self.config = config
        data_dir = Path(config.node.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(
            DataFolder(data_dir).spool,
            fsync=config.node.fsync,
            fsync_directory=config.node.fsync_directory,
        )
        self.db = InstanceDB(config.open_database())
        self.assembler = SeriesAssembler(
            self.db,
            on_series_complete,
            complete_after_s=config.series.complete_after_s,
            complete_on=config.series.complete_on,
            complete_on_release=complete_on_release,
            expected_count_attribute=config.series.expected_count_attribute,
            incomplete_wait_s=config.series.incomplete_wait_s,
            handoff_retry_s=config.series.handoff_retry_s,
        )
        self.scp = StorageSCP(config.node, self.spool, self.assembler)
        self._started = False

    @property
    def port(self) -> int:
        """The TCP port the SCP listens on."""
        return self.scp.port

    def start(self) -> None:
        """Recover state, then start timers and the SCP (returns at once)."""
        started_s = time.monotonic()
        removed = self.spool.remove_temp_files()
        self.assembler.recover()
        indexed = self._index_orphan_files()
        self.assembler.start()
        self.scp.start()
        self._started = True
        log.info(
            "receive node up in %.2f s: %d half-written temp files removed, %d files "
            "re-indexed from the spool, %d series still receiving",
            time.monotonic() - started_s,
            removed,
            indexed,
            len(self.assembler.open_series()),
        )

    def stop(self) -> None:
        """Stop the SCP, then the timers; open series resume at the next start."""
        if not self._started:
            return
        self.scp.stop()
        self.assembler.stop()
        self.db.close()
        self._started = False

    @staticmethod
    def _read_complete(path: Path) -> Dataset:
        """Header of a spool file after checking that no element is cut short."""
        file_meta, offset = split_dataset(path)
        transfer_syntax = UID(str(file_meta.TransferSyntaxUID))
        check_complete(
            path.read_bytes()[offset:],
            implicit_vr=transfer_syntax.is_implicit_VR,
            little_endian=transfer_syntax.is_little_endian,
        )
        return dcmread(path, stop_before_pixels=True)

    def _index_orphan_files(self) -> int:
        """Add rows for spool files whose row was lost (crash after rename)."""
        known = {row["path"] for row in self.db.instance_rows()}
        indexed = 0
        for study_uid, series_uid, sop_uid, path in self.spool.iter_instances():
            if str(path) in known:
                continue
            try:
                ds = self._read_complete(path)
            except Exception as err:  # boundary: one bad file must not stop the node
                # Never acknowledged (no row): a store cut short by a power loss.
                log.warning(
                    "removing incomplete %s from the spool (never acknowledged): %s", path, err
                )
                path.unlink(missing_ok=True)
                continue
            meta = ds.file_meta
            self.assembler.instance_received(
                InstanceArrival(
                    study_uid=study_uid,
                    series_uid=series_uid,
                    sop_instance_uid=sop_uid,
                    sop_class_uid=str(meta.get("MediaStorageSOPClassUID", "")),
                    transfer_syntax_uid=str(meta.get("TransferSyntaxUID", "")),
                    path=path,
                    size_bytes=path.stat().st_size,
                    calling_ae=str(meta.get("SourceApplicationEntityTitle", "") or ""),
                    called_ae=self.config.node.ae_title,
                    peer_address="",
                    association_id=0,
                    header=ds,
                    received_at=datetime.fromtimestamp(path.stat().st_mtime, UTC),
                )
            )
            indexed += 1
        return indexed
