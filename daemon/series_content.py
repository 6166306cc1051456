"""What a series holds: a digest of its instances, to tell a re-push from a change.

Scanners and PACS re-send series routinely. :func:`content_digest` hashes every
instance's data set as received (file meta left out, so the calling AE title
does not count) in SOP Instance UID order; two versions with the same digest
hold the same instances with the same content. A second digest over the SOP
Instance UIDs alone tells "instances were added or removed" from "instances
were replaced by different content".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pynetdicom.dsutils import split_dataset

_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ContentDigest:
    """Digests of one series' instances on disk.

    Attributes
    ----------
    content_sha256 : str
        SHA-256 over ``uid NUL sha256(data set bytes)`` of every instance, by UID.
    uids_sha256 : str
        SHA-256 over the sorted SOP Instance UIDs only.
    count : int
        Number of instances.
    """

    content_sha256: str
    uids_sha256: str
    count: int


def _dataset_sha256(path: Path) -> str:
    _, offset = split_dataset(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def content_digest(paths_by_uid: Mapping[str, Path]) -> ContentDigest:
    """Digest the instances ``{SOP Instance UID: spool file}`` of one series."""
    content = hashlib.sha256()
    uids = hashlib.sha256()
    for uid in sorted(paths_by_uid):
        content.update(f"{uid}\0{_dataset_sha256(paths_by_uid[uid])}\n".encode())
        uids.update(f"{uid}\n".encode())
    return ContentDigest(content.hexdigest(), uids.hexdigest(), len(paths_by_uid))


def describe_change(before: Mapping[str, object], after: ContentDigest) -> str:
    """How ``after`` differs from an earlier version's row (``content_*`` columns)."""
    count_before = int(str(before.get("content_count") or 0))
    version = before.get("version")
    if before.get("uids_sha256") == after.uids_sha256:
        return (
            f"the same {after.count} SOP instances as version {version}, "
            "some with different content (replaced instances)"
        )
    if after.count > count_before:
        return (
            f"{after.count} instances, version {version} had {count_before} "
            f"({after.count - count_before} new)"
        )
    return f"{after.count} instances, version {version} had {count_before} (instances changed)"
