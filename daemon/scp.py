"""The storage SCP: a pynetdicom AE answering C-ECHO and C-STORE.

The C-STORE handler is an intervention handler with one job: put the bytes as
received (plus file meta) durably in the spool, record the rows, then answer.
It never decodes pixel data. Statuses:

- ``0x0000`` stored (file fsynced and renamed, rows written);
- ``0xA700`` out of resources: the file or the rows could not be written
  (disk full, permissions); the sender should retry;
- ``0xA900`` the data set's SOP Instance UID differs from the request's;
- ``0xC000`` cannot understand: truncated or unparsable data set;
- ``0xC001`` a UID needed for the spool path is not a valid UID.

With ``node.accept_sop_classes: all`` (default) every storage SOP class
pynetdicom knows is accepted at negotiation, so a scanner's study push (CT plus
dose reports, Secondary Capture summaries, SR) never fails: instances of the
classes in :data:`STORAGE_SOP_CLASSES` are stored, the others are answered
``0x0000`` and only counted (``ignored_instances`` table, ``contourd status``,
``/metrics``). ``contourable`` refuses the other classes at negotiation.

Failure replies carry an Error Comment. Access control (calling AE allow-list,
optionally ``AE@address``, called AE title) rejects the association in
``EVT_REQUESTED`` with a logged reason. Under the free-disk floor
(``node.min_free_disk_mb``) associations are still accepted, so C-ECHO keeps
answering, and every C-STORE gets ``0xA700`` (logged once per association); pynetdicom enforces
``maximum_associations``. Logs carry peer, AE titles, UIDs, counts and
durations, never patient name, ID or birth date.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.transport import ThreadedAssociationServer

from contourd.errors import InvalidUIDError, SopMismatchError, SpoolError, TruncatedDatasetError
from daemon.config import NodeConfig
from daemon.received_dataset import check_complete, read_header
from daemon.series_assembler import InstanceArrival, SeriesAssembler
from daemon.spool import Spool, validate_uid

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_INVALID_UID = 0xC001

STORAGE_SOP_CLASSES: tuple[UID, ...] = (
    dicom_uid.CTImageStorage,
    dicom_uid.EnhancedCTImageStorage,
    dicom_uid.LegacyConvertedEnhancedCTImageStorage,
    dicom_uid.MRImageStorage,
    dicom_uid.EnhancedMRImageStorage,
    dicom_uid.EnhancedMRColorImageStorage,
    dicom_uid.LegacyConvertedEnhancedMRImageStorage,
    dicom_uid.RTStructureSetStorage,
)

# Stored as received, never decoded here. Deflate is left out on purpose:
# the stream would have to be inflated to check and index it.
TRANSFER_SYNTAXES: tuple[UID, ...] = (
    dicom_uid.ExplicitVRLittleEndian,
    dicom_uid.ImplicitVRLittleEndian,
    dicom_uid.ExplicitVRBigEndian,
    dicom_uid.JPEGBaseline8Bit,
    dicom_uid.JPEGExtended12Bit,
    dicom_uid.JPEGLossless,
    dicom_uid.JPEGLosslessSV1,
    dicom_uid.JPEGLSLossless,
    dicom_uid.JPEGLSNearLossless,
    dicom_uid.JPEG2000Lossless,
    dicom_uid.JPEG2000,
    dicom_uid.RLELossless,
)
assert dicom_uid.DeflatedExplicitVRLittleEndian not in TRANSFER_SYNTAXES

_PREAMBLE = b"\x00" * 128 + b"DICM"
VERIFICATION_SOP_CLASS = UID("1.2.840.10008.1.1")
_MAX_LOGGED_REFUSED = 8


def _assoc_id(assoc: Any) -> int:
    """An id unique among live associations (the association thread's id)."""
    return int(assoc.native_id or 0)


@dataclass
class _AssociationStats:
    calling_ae: str
    called_ae: str
    peer: str
    started_s: float = field(default_factory=time.monotonic)
    stored: int = 0
    failed: int = 0
    ignored: dict[str, int] = field(default_factory=dict)  # SOP class name -> count
    bytes_stored: int = 0
    series: set[str] = field(default_factory=set)
    refused_for_space: int = 0


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]  # LO, 64 characters at most
    return ds


def parse_allowed_callers(entries: list[str]) -> dict[str, set[str]]:
    """``["CT1", "CT2@10.0.0.5"]`` -> ``{"CT1": set(), "CT2": {"10.0.0.5"}}``.

    An empty address set means the AE title may call from any address.
    """
    allowed: dict[str, set[str]] = {}
    for entry in entries:
        ae_title, _, address = entry.strip().partition("@")
        addresses = allowed.setdefault(ae_title.strip(), set())
        if address:
            addresses.add(address.strip())
    return allowed


def build_ssl_context(node: NodeConfig) -> ssl.SSLContext | None:
    """Server-side TLS context from ``node.tls``, or None when TLS is off."""
    tls = node.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile=str(tls.cert_file), keyfile=str(tls.key_file))
    if tls.ca_file is not None:
        context.load_verify_locations(cafile=str(tls.ca_file))
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


class StorageSCP:
    """Accepts associations and stores instances into the spool.

    Parameters
    ----------
    node
        The ``node:`` config section (AE title, address, access control, TLS).
    spool
        Where instances go.
    assembler
        Told about every stored instance and every association end.
    """

    def __init__(self, node: NodeConfig, spool: Spool, assembler: SeriesAssembler) -> None:
        self.node = node
        self.spool = spool
        self.assembler = assembler
        self.allowed_callers = parse_allowed_callers(node.allowed_callers)
        self._stats: dict[int, _AssociationStats] = {}
        self._stats_lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.node.ae_title)
        ae.maximum_associations = self.node.maximum_associations
        ae.maximum_pdu_size = self.node.max_pdu_bytes
        ae.network_timeout = self.node.network_timeout_s
        ae.acse_timeout = self.node.network_timeout_s
        ae.dimse_timeout = self.node.network_timeout_s
        ae.add_supported_context(VERIFICATION_SOP_CLASS)
        sop_classes = list(STORAGE_SOP_CLASSES)
        if self.node.accept_sop_classes == "all":
            sop_classes += [
                UID(str(cx.abstract_syntax))
                for cx in AllStoragePresentationContexts
                if cx.abstract_syntax not in STORAGE_SOP_CLASSES
            ]
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    # -- server life cycle -------------------------------------------------
    def start(self) -> None:
        """Listen on ``node.host:node.port`` in background threads."""
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        self._server = self.ae.start_server(
            (self.node.host, self.node.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=build_ssl_context(self.node),
        )
        log.info(
            "storage SCP %s listening on %s:%d (TLS %s, fsync %s, max %d associations)",
            self.node.ae_title,
            self.node.host,
            self.port,
            "on" if self.node.tls else "off",
            "on" if self.spool.fsync else "off",
            self.node.maximum_associations,
        )

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful when ``node.port`` is 0)."""
        if self._server is None:
            return self.node.port
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop listening and end open associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # -- association events ----------------------------------------------
    @staticmethod
    def _peer(assoc: Any) -> str:
        return f"{assoc.requestor.address}:{assoc.requestor.port}"

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        primitive: Any = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        address = str(assoc.requestor.address)
        reason = None
        rsd = (0x01, 0x01, 0x01)
        if self.allowed_callers:
            addresses = self.allowed_callers.get(calling)
            if addresses is None:
                reason = f"calling AE title {calling!r} is not in node.allowed_callers"
                rsd = (0x01, 0x01, 0x03)
            elif addresses and address not in addresses:
                reason = (
                    f"calling AE title {calling!r} may call from "
                    f"{', '.join(sorted(addresses))}, not {address}"
                )
                rsd = (0x01, 0x01, 0x03)
        if reason is None and called != self.node.ae_title:
            reason = f"called AE title {called!r} is not this node's {self.node.ae_title!r}"
            rsd = (0x01, 0x01, 0x07)
        if reason is None:
            return
        log.warning(
            "association from %s@%s to %s rejected: %s", calling, self._peer(assoc), called, reason
        )
        assoc.acse.send_reject(*rsd)
        assoc.is_rejected = True
        assoc.kill()

    def _on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        stats = _AssociationStats(
            calling_ae=str(assoc.requestor.ae_title).strip(),
            called_ae=str(assoc.acceptor.ae_title).strip(),
            peer=self._peer(assoc),
        )
        with self._stats_lock:
            self._stats[_assoc_id(assoc)] = stats
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        refused = sorted(
            {str(cx.abstract_syntax) for cx in assoc.rejected_contexts if cx.abstract_syntax}
            - accepted
        )
        shown = ", ".join(refused[:_MAX_LOGGED_REFUSED])
        if len(refused) > _MAX_LOGGED_REFUSED:
            shown += f" (+{len(refused) - _MAX_LOGGED_REFUSED} more)"
        log.info(
            "association from %s@%s to %s accepted (%d contexts)%s",
            stats.calling_ae,
            stats.peer,
            stats.called_ae,
            len(assoc.accepted_contexts),
            f"; refused SOP classes (not stored here): {shown}" if refused else "",
        )

    def _on_rejected(self, event: evt.Event) -> None:
        assoc = event.assoc
        log.warning(
            "association from %s@%s rejected by pynetdicom (maximum_associations %d or "
            "negotiation)",
            str(assoc.requestor.ae_title).strip(),
            self._peer(assoc),
            self.node.maximum_associations,
        )

    def _end(self, event: evt.Event, how: str) -> None:
        assoc_id = _assoc_id(event.assoc)
        with self._stats_lock:
            stats = self._stats.pop(assoc_id, None)
        if how == "released":
            self.assembler.association_released(assoc_id)
        else:
            self.assembler.association_aborted(assoc_id)
        if stats is None:
            return
        duration_s = time.monotonic() - stats.started_s
        ignored = ", ".join(f"{name} x{n}" for name, n in sorted(stats.ignored.items()))
        log.info(
            "association from %s@%s %s after %.2f s: %d stored (%.1f MB), %d failed, %d series%s",
            stats.calling_ae,
            stats.peer,
            how,
            duration_s,
            stats.stored,
            stats.bytes_stored / 1e6,
            stats.failed,
            len(stats.series),
            f"; received and ignored (not contoured here): {ignored}" if ignored else "",
        )

    def _on_released(self, event: evt.Event) -> None:
        self._end(event, "released")

    def _on_aborted(self, event: evt.Event) -> None:
        self._end(event, "aborted")

    def _on_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    # -- C-STORE -----------------------------------------------------------
    def _on_store(self, event: evt.Event) -> int | Dataset:
        started_s = time.perf_counter()
        assoc = event.assoc
        with self._stats_lock:
            stats = self._stats.get(_assoc_id(assoc))
        calling = stats.calling_ae if stats else str(assoc.requestor.ae_title).strip()
        peer = stats.peer if stats else self._peer(assoc)
        request = cast(C_STORE, event.request)
        sop_uid_raw = request.AffectedSOPInstanceUID
        full = self._disk_floor_reached()
        if full is not None:
            if stats is not None:
                stats.failed += 1
                stats.refused_for_space += 1
            if stats is None or stats.refused_for_space == 1:
                log.warning(
                    "C-STORE from %s@%s refused with 0xA700 (further refusals in this "
                    "association are counted, not logged): %s",
                    calling,
                    peer,
                    full,
                )
            return _status(STATUS_OUT_OF_RESOURCES, full)
        sop_class = str(request.AffectedSOPClassUID or "")
        if sop_class not in STORAGE_SOP_CLASSES:
            return self._ignore(stats, calling, peer, sop_class)
        try:
            result = self._store(event, calling, peer)
        except InvalidUIDError as err:
            return self._failed(stats, calling, peer, sop_uid_raw, STATUS_INVALID_UID, err)
        except TruncatedDatasetError as err:
            return self._failed(stats, calling, peer, sop_uid_raw, STATUS_CANNOT_UNDERSTAND, err)
        except SopMismatchError as err:
            return self._failed(stats, calling, peer, sop_uid_raw, STATUS_SOP_MISMATCH, err)
        except SpoolError as err:
            return self._failed(stats, calling, peer, sop_uid_raw, STATUS_OUT_OF_RESOURCES, err)
        except Exception as err:  # boundary: one instance fails, the node keeps serving
            log.exception("C-STORE of %s from %s@%s failed", sop_uid_raw, calling, peer)
            return self._failed(stats, calling, peer, sop_uid_raw, STATUS_OUT_OF_RESOURCES, err)
        arrival, version = result
        if stats is not None:
            stats.stored += 1
            stats.bytes_stored += arrival.size_bytes
            stats.series.add(arrival.series_uid)
        log.debug(
            "stored %s (series %s v%d, %d bytes, %s) from %s@%s in %.1f ms",
            arrival.sop_instance_uid,
            arrival.series_uid,
            version,
            arrival.size_bytes,
            arrival.transfer_syntax_uid,
            calling,
            peer,
            (time.perf_counter() - started_s) * 1e3,
        )
        return STATUS_SUCCESS

    def _disk_floor_reached(self) -> str | None:
        """Why images are refused for space now, or ``None`` while there is enough."""
        if self.node.min_free_disk_mb <= 0:
            return None
        free_mb = self.spool.free_disk_mb()
        if free_mb >= self.node.min_free_disk_mb:
            return None
        return (
            f"free disk {free_mb:.0f} MiB under node.min_free_disk_mb "
            f"{self.node.min_free_disk_mb}; retry later"
        )

    def _store(self, event: evt.Event, calling: str, peer: str) -> tuple[InstanceArrival, int]:
        request = cast(C_STORE, event.request)
        return store_instance(
            self.spool,
            self.assembler,
            sop_uid_raw=request.AffectedSOPInstanceUID,
            sop_class_uid=str(request.AffectedSOPClassUID),
            transfer_syntax=UID(event.context.transfer_syntax),
            stream=event.encoded_dataset(include_meta=False),
            file_meta=event.file_meta,
            calling_ae=calling,
            called_ae=str(event.assoc.acceptor.ae_title).strip(),
            peer=peer,
            association_id=_assoc_id(event.assoc),
        )

    def _ignore(
        self, stats: _AssociationStats | None, calling: str, peer: str, sop_class: str
    ) -> int | Dataset:
        """Count an instance of a class the node does not contour; answer success."""
        name = UID(sop_class).name if sop_class else "no SOP class"
        try:
            self.assembler.db.record_ignored(sop_class, calling, datetime.now(UTC).isoformat())
        except Exception as err:  # boundary: the count could not be kept; the sender retries
            log.exception("cannot count an ignored %s instance from %s@%s", name, calling, peer)
            return _status(STATUS_OUT_OF_RESOURCES, f"cannot record the instance: {err}")
        if stats is not None:
            stats.ignored[name] = stats.ignored.get(name, 0) + 1
        return STATUS_SUCCESS

    def _failed(
        self,
        stats: _AssociationStats | None,
        calling: str,
        peer: str,
        sop_uid: object,
        code: int,
        err: Exception,
    ) -> Dataset:
        if stats is not None:
            stats.failed += 1
        shown = str(sop_uid)[:80].encode("ascii", "backslashreplace").decode("ascii")
        log.warning(
            "C-STORE of %s from %s@%s refused with status 0x%04X: %s",
            shown,
            calling,
            peer,
            code,
            err,
        )
        return _status(code, str(err))


def store_instance(
    spool: Spool,
    assembler: SeriesAssembler,
    *,
    sop_uid_raw: object,
    sop_class_uid: str,
    transfer_syntax: UID,
    stream: bytes,
    file_meta: FileMetaDataset,
    calling_ae: str,
    called_ae: str,
    peer: str,
    association_id: int,
) -> tuple[InstanceArrival, int]:
    """Put one received instance durably in the spool and hand it to the assembler.

    The one path every receiver (C-STORE, STOW-RS) takes: the data set bytes
    are checked to be complete, the UIDs that key the spool path validated,
    the file written and fsynced (:meth:`Spool.store`), and the row recorded,
    before the caller acknowledges anything. Returns the arrival and the
    series version it joined.

    Raises
    ------
    InvalidUIDError, TruncatedDatasetError, SopMismatchError, SpoolError
        Each mapped by the caller to its protocol's refusal.
    """
    sop_uid = validate_uid(sop_uid_raw, "AffectedSOPInstanceUID")
    implicit = transfer_syntax.is_implicit_VR
    little = transfer_syntax.is_little_endian
    check_complete(stream, implicit_vr=implicit, little_endian=little)
    try:
        header = read_header(stream, implicit_vr=implicit, little_endian=little)
        study_raw = header.get("StudyInstanceUID")
        series_raw = header.get("SeriesInstanceUID")
        sop_in_dataset = header.get("SOPInstanceUID")
    except Exception as err:
        raise TruncatedDatasetError(
            f"data set of {sop_uid} cannot be parsed: {err}; re-send a valid instance"
        ) from err
    study_uid = validate_uid(study_raw, "StudyInstanceUID")
    series_uid = validate_uid(series_raw, "SeriesInstanceUID")
    if sop_in_dataset is not None and str(sop_in_dataset).rstrip("\x00 ") != sop_uid:
        raise SopMismatchError(
            f"SOP Instance UID in the data set ({sop_in_dataset}) differs from the "
            f"request's ({sop_uid}); the sender must send matching UIDs"
        )
    file_meta.SourceApplicationEntityTitle = calling_ae
    meta = _PREAMBLE + encode_file_meta(file_meta)
    stored = spool.store(study_uid, series_uid, sop_uid, [meta, stream])
    arrival = InstanceArrival(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=str(transfer_syntax),
        path=stored.path,
        size_bytes=stored.size_bytes,
        calling_ae=calling_ae,
        called_ae=called_ae,
        peer_address=peer,
        association_id=association_id,
        header=header,
        received_at=datetime.now(UTC),
    )
    try:
        version = assembler.instance_received(arrival)
    except Exception as err:
        raise SpoolError(
            f"instance {sop_uid} is on disk at {stored.path} but its database row "
            f"could not be written: {err}; it is indexed again at the next start"
        ) from err
    return arrival, version
