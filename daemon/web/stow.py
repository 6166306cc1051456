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

from contourd.errors import InvalidUIDError, SpoolError
from daemon.received_dataset import TruncatedDatasetError
from daemon.scp import SopMismatchError, store_instance
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


class StowBodyError(ValueError):
    """The request body is not a multipart/related message (the caller answers 400/415)."""


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The payloads of a ``multipart/related`` body (headers of each part dropped)."""
    found = _BOUNDARY.search(content_type or "")
    if not content_type.lower().startswith("multipart/related") or found is None:
        raise StowBodyError(
            f"Content-Type {content_type!r}: expected multipart/related; "
            f'type="application/dicom"; boundary=...'
        )
    delimiter = b"--" + found.group(1).encode("ascii")
    parts: list[bytes] = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise StowBodyError("a part of the multipart body has no blank line after its headers")
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        parts.append(payload)
    if not parts:
        raise StowBodyError("the multipart body holds no part")
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

    def store(self, parts: list[bytes], *, user: str, peer: str) -> tuple[int, dict[str, Any]]:
        """Store every part; return the HTTP status and the DICOM JSON response."""
        association_id = next(_association_ids)
        stored: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        calling = f"STOW:{user}"[:16]
        try:
            for index, part in enumerate(parts):
                sop_class, sop_uid, outcome = self._store_one(
                    part, index, calling=calling, peer=peer, association_id=association_id
                )
                item: dict[str, dict[str, Any]] = {
                    "00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
                    "00081155": {"vr": "UI", "Value": [sop_uid]} if sop_uid else {"vr": "UI"},
                }
                if outcome is None:
                    stored.append(item)
                else:
                    code, text = outcome
                    item["00081197"] = {"vr": "US", "Value": [code]}
                    item["00000902"] = {"vr": "LO", "Value": [text[:64]]}
                    failed.append(item)
                    log.warning("STOW-RS part %d from %s@%s refused: %s", index, user, peer, text)
        finally:
            self.assembler.association_released(association_id)
        log.info("STOW-RS from %s@%s: %d stored, %d refused", user, peer, len(stored), len(failed))
        response: dict[str, Any] = {}
        if stored:
            response["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            response["00081198"] = {"vr": "SQ", "Value": failed}
        status = 200 if not failed else (202 if stored else 409)
        return status, response

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
