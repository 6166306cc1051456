"""DICOMweb STOW-RS receive (``POST /dicomweb/studies``) into the node's spool.

Each part of the ``multipart/related; type="application/dicom"`` body is a
DICOM Part 10 file. It takes the same path as a C-STORE instance
(:func:`daemon.scp.store_instance`): complete-data-set check, UID checks,
fsynced spool file, database row, series assembly; the answer is sent only
after every part is on disk. The request counts as one association for the
assembler, so rules with ``complete_on: association_release`` complete the
series when the request ends. The answer is the PS3.18 Store Instances
Response (DICOM JSON): ReferencedSOPSequence for stored instances,
FailedSOPSequence with a FailureReason and a text for refused ones.
"""

from __future__ import annotations

import io
import itertools
import logging
import re
from dataclasses import dataclass
from typing import Any

from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID

from contourd.errors import (
    InvalidUIDError,
    SopMismatchError,
    SpoolError,
    StowBodyError,
    TruncatedDatasetError,
)
from daemon.scp import store_instance
from daemon.series_assembler import SeriesAssembler
from daemon.spool import Spool

log = logging.getLogger(__name__)

# PS3.18 failure reasons (the DIMSE statuses of the same causes).
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_SOP_MISMATCH = 0xA900
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_INVALID_UID = 0xC001

_association_ids = itertools.count(start=2**40)
"""Association ids for STOW requests, far from pynetdicom's (``id()`` of objects)."""

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


class MultipartSplitter:
    """Splits a ``multipart/related`` body into its payloads as the bytes arrive.

    :meth:`feed` takes the next chunk and returns the payloads it completed
    (headers of each part dropped), so each instance can be stored while the
    rest of the body is still on the wire. :meth:`close` checks the end.
    """

    def __init__(self, content_type: str) -> None:
        found = _BOUNDARY.search(content_type or "")
        if not (content_type or "").lower().startswith("multipart/related") or found is None:
            raise StowBodyError(
                f"Content-Type {content_type!r}: expected multipart/related; "
                f'type="application/dicom"; boundary=...'
            )
        boundary = found.group(1).encode("ascii")
        self._first = b"--" + boundary
        self._delimiter = b"\r\n--" + boundary
        self._buffer = bytearray()
        self._scan_from = 0
        self._started = False
        self.finished = False
        self.parts_seen = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk``; return the payloads completed by it."""
        if self.finished:
            return []
        self._buffer += chunk
        if not self._started:
            start = self._buffer.find(self._first)
            if start < 0:
                return []
            del self._buffer[: start + len(self._first)]
            self._started = True
            self._scan_from = 0
        parts: list[bytes] = []
        while True:
            if self._buffer[:2] == b"--":  # the closing delimiter
                self.finished = True
                self._buffer.clear()
                break
            end = self._buffer.find(self._delimiter, self._scan_from)
            if end < 0:
                self._scan_from = max(0, len(self._buffer) - len(self._delimiter))
                break
            parts.append(self._payload(bytes(self._buffer[:end])))
            del self._buffer[: end + len(self._delimiter)]
            self._scan_from = 0
        self.parts_seen += len(parts)
        return parts

    @staticmethod
    def _payload(part: bytes) -> bytes:
        _head, sep, payload = part.partition(b"\r\n\r\n")
        if not sep:
            raise StowBodyError("a part of the multipart body has no blank line after its headers")
        return payload

    def close(self) -> None:
        """Raise :class:`StowBodyError` when the body held no part or was cut short."""
        if self.parts_seen == 0:
            raise StowBodyError("the multipart body holds no part")
        if not self.finished:
            raise StowBodyError(
                "the multipart body ended before its closing boundary; the parts before it "
                "are stored, send the rest again"
            )


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The payloads of a whole ``multipart/related`` body (see :class:`MultipartSplitter`)."""
    splitter = MultipartSplitter(content_type)
    parts = splitter.feed(body)
    splitter.close()
    return parts


@dataclass
class StowReceiver:
    """Stores STOW-RS requests in the receive node's spool.

    Parameters
    ----------
    spool, assembler
        The running :class:`daemon.node.ReceiveNode`'s.
    called_ae
        Recorded as the instances' called AE title (routing may match on it).
    min_free_disk_mb
        Below this free space every instance is refused (as C-STORE refuses
        associations).
    """

    spool: Spool
    assembler: SeriesAssembler
    called_ae: str
    min_free_disk_mb: int = 0

    def begin(self, *, user: str, peer: str) -> StowRequest:
        """A new request: store parts with :meth:`StowRequest.add`, then ``finish()``."""
        return StowRequest(self, user=user, peer=peer, association_id=next(_association_ids))

    def store(self, parts: list[bytes], *, user: str, peer: str) -> tuple[int, dict[str, Any]]:
        """Store every part of a whole body; return the HTTP status and the DICOM JSON answer."""
        request = self.begin(user=user, peer=peer)
        for part in parts:
            request.add(part)
        return request.finish()

    def _store_one(
        self, part: bytes, index: int, *, calling: str, peer: str, association_id: int
    ) -> tuple[str, str, tuple[int, str] | None]:
        """(SOP class, SOP instance, None) when stored, else with (failure reason, text)."""
        try:
            stream = io.BytesIO(part)
            read_preamble(stream, False)
            meta = _read_file_meta_info(stream)
            offset = stream.tell()
        except Exception as err:
            return (
                "",
                "",
                (
                    FAILURE_CANNOT_UNDERSTAND,
                    f"part {index} is not a DICOM Part 10 file: {err}",
                ),
            )
        sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
        sop_uid = str(meta.get("MediaStorageSOPInstanceUID", ""))
        if self.min_free_disk_mb > 0 and self.spool.free_disk_mb() < self.min_free_disk_mb:
            return (
                sop_class,
                sop_uid,
                (
                    FAILURE_OUT_OF_RESOURCES,
                    f"free disk under node.min_free_disk_mb {self.min_free_disk_mb}",
                ),
            )
        try:
            store_instance(
                self.spool,
                self.assembler,
                sop_uid_raw=sop_uid,
                sop_class_uid=sop_class,
                transfer_syntax=UID(str(meta.get("TransferSyntaxUID", ""))),
                stream=part[offset:],
                file_meta=meta,
                calling_ae=calling,
                called_ae=self.called_ae,
                peer=peer,
                association_id=association_id,
            )
        except InvalidUIDError as err:
            return sop_class, sop_uid, (FAILURE_INVALID_UID, str(err))
        except TruncatedDatasetError as err:
            return sop_class, sop_uid, (FAILURE_CANNOT_UNDERSTAND, str(err))
        except SopMismatchError as err:
            return sop_class, sop_uid, (FAILURE_SOP_MISMATCH, str(err))
        except SpoolError as err:
            return sop_class, sop_uid, (FAILURE_OUT_OF_RESOURCES, str(err))
        return sop_class, sop_uid, None


class StowRequest:
    """One STOW-RS request in progress (one association for the assembler)."""

    def __init__(self, receiver: StowReceiver, *, user: str, peer: str, association_id: int):
        self.receiver = receiver
        self.user = user
        self.peer = peer
        self.association_id = association_id
        self.calling_ae = f"STOW:{user}"[:16]
        self.stored: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []

    def add(self, part: bytes) -> None:
        """Store one Part 10 file durably (or record why not)."""
        index = len(self.stored) + len(self.failed)
        sop_class, sop_uid, outcome = self.receiver._store_one(
            part,
            index,
            calling=self.calling_ae,
            peer=self.peer,
            association_id=self.association_id,
        )
        item: dict[str, dict[str, Any]] = {
            "00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
            "00081155": {"vr": "UI", "Value": [sop_uid]} if sop_uid else {"vr": "UI"},
        }
        if outcome is None:
            self.stored.append(item)
            return
        code, text = outcome
        self.refuse(item, code, text)

    def refuse(self, item: dict[str, dict[str, Any]], code: int, text: str) -> None:
        """Record a refused instance (or a refused rest of the body) with its reason."""
        item["00081197"] = {"vr": "US", "Value": [code]}
        item["00000902"] = {"vr": "LO", "Value": [text[:64]]}
        self.failed.append(item)
        log.warning("STOW-RS from %s@%s refused: %s", self.user, self.peer, text)

    def finish(self) -> tuple[int, dict[str, Any]]:
        """End the request (association release); return the HTTP status and the answer."""
        self.receiver.assembler.association_released(self.association_id)
        log.info(
            "STOW-RS from %s@%s: %d stored, %d refused",
            self.user,
            self.peer,
            len(self.stored),
            len(self.failed),
        )
        response: dict[str, Any] = {}
        if self.stored:
            response["00081199"] = {"vr": "SQ", "Value": self.stored}
        if self.failed:
            response["00081198"] = {"vr": "SQ", "Value": self.failed}
        status = 200 if not self.failed else (202 if self.stored else 409)
        return status, response
