"""Checks and header reads on a C-STORE data set exactly as it was received.

Nothing here decodes pixel data. :func:`check_complete` walks the encoded
elements (values are skipped, sequences and encapsulated pixel data are walked
item by item) and raises :class:`TruncatedDatasetError` when an element
declares more bytes than were received or a sequence never ends; pydicom alone
silently accepts a short last value. :func:`read_header` parses the elements
before the pixel data.
"""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from contourd.errors import TruncatedDatasetError

_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_MAX_DEPTH = 32


def check_complete(stream: bytes, *, implicit_vr: bool, little_endian: bool) -> None:
    """Raise if ``stream`` (a data set without file meta) is cut short.

    Parameters
    ----------
    stream
        The encoded data set as received over DIMSE.
    implicit_vr, little_endian
        The accepted transfer syntax's encoding.

    Raises
    ------
    TruncatedDatasetError
        With the offending tag, the declared and the available length.
    """
    end = _walk_dataset(stream, 0, implicit_vr, "<" if little_endian else ">", False, 0)
    if end != len(stream):  # pragma: no cover - _walk_dataset consumes to the end
        raise TruncatedDatasetError(f"data set parsing stopped at byte {end} of {len(stream)}")


def read_header(stream: bytes, *, implicit_vr: bool, little_endian: bool) -> Dataset:
    """Parse the elements before (7FE0,0010) Pixel Data into a Dataset."""
    return read_dataset(
        BytesIO(stream),
        implicit_vr,
        little_endian,
        stop_when=lambda tag, vr, length: tag >= _PIXEL_DATA,
    )


def _fail(tag: int, offset: int, message: str) -> TruncatedDatasetError:
    return TruncatedDatasetError(
        f"data set is truncated or malformed at element ({tag >> 16:04X},{tag & 0xFFFF:04X}) "
        f"byte {offset}: {message}; the sender should re-send the complete instance"
    )


def _walk_dataset(
    buf: bytes, pos: int, implicit: bool, order: str, in_item: bool, depth: int
) -> int:
    end = len(buf)
    tag_fmt, short_fmt, long_fmt = f"{order}HH", f"{order}H", f"{order}I"
    while pos < end:
        if pos + 8 > end:
            raise _fail(0, pos, f"only {end - pos} bytes left for an element header")
        group, element = struct.unpack_from(tag_fmt, buf, pos)
        tag = (group << 16) | element
        if tag == _ITEM_DELIMITER and in_item:
            return pos + 8
        if group == 0xFFFE:
            raise _fail(tag, pos, "unexpected item or sequence delimiter")
        nested_implicit = implicit
        if implicit:
            (length,) = struct.unpack_from(long_fmt, buf, pos + 4)
            pos += 8
        else:
            vr = buf[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise _fail(tag, pos, "element header cut short")
                (length,) = struct.unpack_from(long_fmt, buf, pos + 8)
                pos += 12
                nested_implicit = vr == b"UN"  # undefined-length UN is implicit VR LE
            else:
                (length,) = struct.unpack_from(short_fmt, buf, pos + 6)
                pos += 8
        if length == _UNDEFINED:
            pos = _walk_items(buf, pos, nested_implicit, order, tag == _PIXEL_DATA, depth + 1)
        elif pos + length > end:
            raise _fail(tag, pos, f"declares {length} bytes, only {end - pos} received")
        else:
            pos += length
    if in_item:
        raise _fail(0, pos, "sequence item has no item delimiter")
    return pos


def _walk_items(
    buf: bytes, pos: int, implicit: bool, order: str, encapsulated: bool, depth: int
) -> int:
    if depth > _MAX_DEPTH:
        raise _fail(0, pos, f"sequences nested deeper than {_MAX_DEPTH}")
    end = len(buf)
    while True:
        if pos + 8 > end:
            raise _fail(0, pos, "sequence or encapsulated pixel data has no delimiter")
        group, element, length = struct.unpack_from(f"{order}HHI", buf, pos)
        tag = (group << 16) | element
        pos += 8
        if tag == _SEQUENCE_DELIMITER:
            return pos
        if tag != _ITEM:
            raise _fail(tag, pos - 8, "expected an item tag (FFFE,E000)")
        if length == _UNDEFINED:
            if encapsulated:
                raise _fail(tag, pos - 8, "pixel data fragment of undefined length")
            pos = _walk_dataset(buf, pos, implicit, order, True, depth)
        elif pos + length > end:
            raise _fail(tag, pos - 8, f"item declares {length} bytes, only {end - pos} received")
        else:
            pos += length
