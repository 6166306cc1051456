"""A minimal storage SCP that plays the treatment-planning system in the demo.

It accepts RT Structure Set, Segmentation and image storage, writes each
object as ``<folder>/<Modality>_<SOPInstanceUID>.dcm`` and remembers the paths.
It is a stand-in for a TPS's DICOM import node, not part of the product path.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from pydicom.uid import RTStructureSetStorage, SegmentationStorage
from pynetdicom import AE, AllStoragePresentationContexts, evt


class DemoReceiver:
    """Storage SCP on ``127.0.0.1:port`` (0: a free port) writing into ``folder``."""

    def __init__(self, folder: Path, *, ae_title: str = "TPS", port: int = 0) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.received: list[Path] = []
        self._lock = threading.Lock()
        self._ae = AE(ae_title=ae_title)
        self._ae.supported_contexts = AllStoragePresentationContexts
        for uid in (RTStructureSetStorage, SegmentationStorage):
            self._ae.add_supported_context(uid)
        self._requested_port = port
        self._server: Any = None

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = self.folder / f"{ds.get('Modality', 'OT')}_{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        with self._lock:
            self.received.append(path)
        return 0x0000

    def start(self) -> DemoReceiver:
        """Start serving in a background thread."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._server = self._ae.start_server(
            ("127.0.0.1", self._requested_port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        return self

    @property
    def port(self) -> int:
        """The TCP port actually bound."""
        return int(self._server.server_address[1])

    def files(self, modality: str | None = None) -> list[Path]:
        """Objects received so far, optionally only one modality (e.g. RTSTRUCT)."""
        with self._lock:
            paths = list(self.received)
        return [p for p in paths if modality is None or p.name.startswith(f"{modality}_")]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
