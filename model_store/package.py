"""Reading model packages (a folder or a ``.zip``) and the checks done on import.

A package holds ``model.yaml`` (the card), ``weights.safetensors`` for a
``unet`` model (none for a ``classical`` one) and, optionally, plain-text
documents (README, LICENSE, ``*.md``, ``*.txt``, ``*.json``, ``*.csv``,
``*.yaml``). Everything else is refused, each with its reason:

- pickle in any form (``.pt``, ``.pth``, ``.ckpt``, ``.bin``, ``.pkl``, a file
  starting with the pickle protocol marker, or an archive holding one): loading
  pickle runs code;
- DICOM files (``DICM`` at byte 128, a DICOM extension, or a headerless DICOM
  data set) and medical image formats (NIfTI, NRRD, MHA/MHD, NumPy, HDF5...),
  images, nested archives: they can hold patient data, which a shareable model
  must never carry;
- text that names a patient (``PatientName: ...``, tags ``(0010,0010)``,
  ``(0010,0020)``, ``(0010,0030)``) or holds an instance UID (study/series UIDs
  identify a patient's exam);
- symbolic links and zip members with absolute or ``..`` paths;
- a ``unet`` card whose ROI labels do not match the weights' output channels
  (``head.weight`` shape ``[num_classes, ...]``), or any other tensor whose shape
  differs from the network the card's architecture describes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from contourd.errors import ModelPackageError
from model_store.card import ModelCard, parse_card
from model_store.network_layout import nnunet_tensor_shapes, unet_tensor_shapes
from model_store.tg263 import check_roi_names

CARD_FILE = "model.yaml"
WEIGHTS_FILE = "weights.safetensors"

PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".joblib", ".sav"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ".dc3"}
PATIENT_DATA_SUFFIXES = {
    ".nii",
    ".nii.gz",
    ".nrrd",
    ".nhdr",
    ".mha",
    ".mhd",
    ".raw",
    ".img",
    ".hdr",
    ".npy",
    ".npz",
    ".h5",
    ".hdf5",
    ".mat",
    ".mnc",
    ".vtk",
    ".stl",
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".gif",
}
ARCHIVE_SUFFIXES = {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar"}
TEXT_SUFFIXES = {".md", ".txt", ".rst", ".json", ".csv", ".yaml", ".yml"}
TEXT_NAMES = {"README", "LICENSE", "LICENCE", "NOTICE", "AUTHORS", "CHANGELOG"}
#: Zip entries created by desktop archivers that are skipped, not refused.
IGNORED_ZIP_PREFIXES = ("__MACOSX/",)
IGNORED_NAMES = {".DS_Store", "Thumbs.db"}

MAX_FILES = 200
MAX_TOTAL_BYTES = 8 * 1024**3
MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024**2

_DICOM_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}  # fmt: skip
_PATIENT_TEXT_RE = re.compile(
    r"(\b(patient[ _']?s?[ _]?(name|id|birth[ _]?date)|other[ _]?patient[ _]?ids|dob|mrn"
    r"|date[ _]of[ _]birth|medical[ _]record[ _]number)\b[\"']?\s*[:=]\s*[\"']?[^\s\"',}]"
    r"|\(\s*0010\s*,\s*00(10|20|30)\s*\))",
    re.IGNORECASE,
)
#: A DICOM UID with six or more components outside the standard's own root
#: (1.2.840.10008 names transfer syntaxes and SOP classes, not exams).
_INSTANCE_UID_RE = re.compile(r"(?<![\d.])(?!1\.2\.840\.10008\.)[12]\.\d+(?:\.\d+){4,}(?![\d.])")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor in a safetensors header: dtype name and shape."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class CheckedPackage:
    """A package that passed every import check.

    Attributes
    ----------
    root
        Folder holding ``model.yaml`` (a temporary folder for a zip; valid only
        inside :func:`open_package`).
    card
        The validated card.
    card_sha256
        sha256 of ``model.yaml`` (hex).
    weights_sha256
        sha256 of ``weights.safetensors`` (hex); ``None`` for a classical model,
        which has no weights (its card hash is what is checked instead).
    files
        Every file of the package, relative POSIX paths, sorted.
    warnings
        Non-fatal remarks (ROI names that are not TG-263 names, ...).
    """

    root: Path
    card: ModelCard
    card_sha256: str
    weights_sha256: str | None
    files: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def weights_path(self) -> Path | None:
        """``root / weights.safetensors`` for a unet model, else ``None``."""
        return self.root / WEIGHTS_FILE if self.weights_sha256 is not None else None


def sha256_file(path: Path, chunk_bytes: int = 1024 * 1024) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _full_suffix(name: str) -> str:
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    return PurePosixPath(lower).suffix


def _looks_like_headerless_dicom(head: bytes) -> bool:
    """A data set without preamble: group 0002 or 0008 tag, then an explicit VR."""
    if len(head) < 8 or head[0:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    if head[4:6] in _DICOM_VRS:
        return True
    # Implicit VR little endian: (0008,0000..0018) then a 4-byte length that fits.
    element = struct.unpack("<H", head[2:4])[0]
    length = struct.unpack("<I", head[4:8])[0]
    return element <= 0x0018 and length < 1024


def _looks_like_pickle(head: bytes) -> bool:
    """Pickle protocol 2-5 streams start with PROTO (0x80) and the protocol number."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def check_file(rel: str, path: Path) -> None:
    """Refuse a file that must not be in a model package.

    Parameters
    ----------
    rel
        Path relative to the package root (for messages), POSIX separators.
    path
        The file on disk.

    Raises
    ------
    ModelPackageError
        With the file, what it looks like and why that is refused.
    """
    name = PurePosixPath(rel).name
    suffix = _full_suffix(name)
    if path.is_symlink():
        raise ModelPackageError(f"{rel} is a symbolic link; a package holds plain files only")
    with open(path, "rb") as fh:
        head = fh.read(348)
    pickle_error = ModelPackageError(
        f"{rel} holds pickle weights ({suffix or 'pickle header'}); loading pickle runs "
        "arbitrary code, so contourd refuses it. Convert the state dict with "
        "safetensors.torch.save_file(state_dict, 'weights.safetensors')"
    )
    if rel == WEIGHTS_FILE:
        # A well-formed safetensors header rules out every other format; check it first
        # because its 8-byte length prefix can look like a pickle or DICOM start.
        try:
            read_safetensors_header(path)
        except ModelPackageError as err:
            if _looks_like_pickle(head) or head[:4] == b"PK\x03\x04":
                raise pickle_error from err
            raise
        return
    if suffix in PICKLE_SUFFIXES or _looks_like_pickle(head):
        raise pickle_error
    if (
        suffix in DICOM_SUFFIXES
        or name.upper() == "DICOMDIR"
        or head[128:132] == b"DICM"
        or _looks_like_headerless_dicom(head)
    ):
        raise ModelPackageError(
            f"{rel} is a DICOM file; model packages are shared between clinics and must "
            "never carry patient images. Remove it from the package"
        )
    if suffix in PATIENT_DATA_SUFFIXES or head[344:348] in (b"n+1\x00", b"ni1\x00"):
        raise ModelPackageError(
            f"{rel} is image or array data ({suffix or 'NIfTI header'}), which may be patient "
            "data; a package holds model.yaml, weights.safetensors and text documents only"
        )
    if suffix in ARCHIVE_SUFFIXES or head[:4] == b"PK\x03\x04" or head[:2] == b"\x1f\x8b":
        raise ModelPackageError(
            f"{rel} is an archive inside the package; nested archives can hide patient data "
            "or pickle files. Unpack it and keep only model.yaml, weights and text documents"
        )
    if suffix == ".safetensors":
        raise ModelPackageError(
            f"{rel}: only one weights file, named {WEIGHTS_FILE} at the package root, is allowed"
        )
    if suffix not in TEXT_SUFFIXES and name.upper() not in TEXT_NAMES:
        raise ModelPackageError(
            f"{rel} is not an allowed package file; a package holds {CARD_FILE}, "
            f"{WEIGHTS_FILE} and text documents ({', '.join(sorted(TEXT_SUFFIXES))}, README, "
            "LICENSE) only"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ModelPackageError(f"{rel} should be UTF-8 text but holds binary data") from err
    check_text_for_identifiers(rel, text)


def check_text_for_identifiers(rel: str, text: str) -> None:
    """Refuse text that names a patient or holds an exam's DICOM UID.

    Raises
    ------
    ModelPackageError
        Quoting the line number (never the value) and what was found.
    """
    for line_no, line in enumerate(text.splitlines(), start=1):
        if _PATIENT_TEXT_RE.search(line):
            raise ModelPackageError(
                f"{rel} line {line_no} looks like patient data (a patient name, ID or birth "
                "date field); models must carry no patient identifiers. Remove it"
            )
        if _INSTANCE_UID_RE.search(line):
            raise ModelPackageError(
                f"{rel} line {line_no} holds a DICOM UID, which identifies a patient's study "
                "or series; remove it (counts and dates only in the training summary)"
            )


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes of a safetensors file, without loading data.

    Raises
    ------
    ModelPackageError
        When the file is not a well-formed safetensors file.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise ModelPackageError(f"{path.name} is too short to be a safetensors file")
        header_len = struct.unpack("<Q", prefix)[0]
        if header_len > min(MAX_SAFETENSORS_HEADER_BYTES, size - 8):
            raise ModelPackageError(
                f"{path.name} is not a safetensors file (header length {header_len} does not "
                f"fit in {size} bytes); save weights with safetensors.torch.save_file"
            )
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelPackageError(f"{path.name} has an unreadable safetensors header: {err}") from err
    if not isinstance(header, dict):
        raise ModelPackageError(f"{path.name} has a safetensors header that is not a mapping")
    tensors: dict[str, TensorInfo] = {}
    data_bytes = size - 8 - header_len
    for key, info in header.items():
        if key == "__metadata__":
            check_text_for_identifiers(f"{path.name} metadata", json.dumps(info, indent=0))
            continue
        try:
            start, end = info["data_offsets"]
            tensors[key] = TensorInfo(str(info["dtype"]), tuple(int(d) for d in info["shape"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ModelPackageError(f"{path.name}: tensor {key!r} has a malformed entry") from err
        if not 0 <= start <= end <= data_bytes:
            raise ModelPackageError(
                f"{path.name}: tensor {key!r} data offsets [{start}, {end}] lie outside the "
                f"{data_bytes} data bytes; the file is truncated or corrupt"
            )
    return tensors


def check_weights_match_card(tensors: dict[str, TensorInfo], card: ModelCard) -> None:
    """Check the weights are the network the card describes.

    The head layer decides the label check: ``head.weight`` has shape
    ``[num_classes, base_channels, 1, 1, 1]`` and the card's labels must be
    ``1..num_classes-1``. Then every tensor name and shape is compared with
    :func:`model_store.network_layout.unet_tensor_shapes` (the state dict of
    :class:`inference.unet.UNet3D` built from the card's architecture).

    Raises
    ------
    ModelPackageError
        On a label/channel mismatch or any architecture difference.
    """
    assert card.architecture is not None  # unet cards always have one (validated)
    head = tensors.get("head.weight")
    if head is None:
        raise ModelPackageError(
            f"{WEIGHTS_FILE} has no 'head.weight' tensor; it was not saved from "
            "inference.unet.UNet3D (state_dict keys must match)"
        )
    labels = sorted(r.label for r in card.rois)
    channels = head.shape[0]
    if channels != card.architecture.num_classes:
        raise ModelPackageError(
            f"ROI labels {labels} do not match the network: {WEIGHTS_FILE} head.weight has "
            f"{channels} output channels (shape {list(head.shape)}), so the card must list "
            f"labels 1..{channels - 1} and architecture.num_classes: {channels}; it says "
            f"num_classes: {card.architecture.num_classes}"
        )
    expected = unet_tensor_shapes(card.architecture)
    _compare_shapes(tensors, expected, f"the card's architecture {card.architecture.model_dump()}")


def _compare_shapes(
    tensors: dict[str, TensorInfo], expected: dict[str, tuple[int, ...]], what: str
) -> None:
    got = {k: v.shape for k, v in tensors.items()}
    problems = [f"missing {k}" for k in sorted(expected.keys() - got.keys())]
    problems += [f"unexpected {k}" for k in sorted(got.keys() - expected.keys())]
    problems += [
        f"{k} has shape {list(got[k])}, {what} gives {list(expected[k])}"
        for k in sorted(expected.keys() & got.keys())
        if expected[k] != got[k]
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" * (len(problems) > 5))
        raise ModelPackageError(f"{WEIGHTS_FILE} does not match {what}: {shown}")


def check_nnunet_weights_match_card(tensors: dict[str, TensorInfo], card: ModelCard) -> None:
    """Check the weights hold every fold of the network the card's ``nnunet`` section builds.

    The output channels are background plus the card's labels ``1..N``.

    Raises
    ------
    ModelPackageError
        On a label/channel mismatch or any architecture difference.
    """
    assert card.nnunet is not None  # nnunet cards always have one (validated)
    labels = sorted(r.label for r in card.rois)
    if labels != list(range(1, len(labels) + 1)):
        raise ModelPackageError(
            f"ROI labels {labels} of an nnU-Net model must be 1..{len(labels)} (the "
            "dataset.json labels); fix the rois list"
        )
    try:
        expected = nnunet_tensor_shapes(card.nnunet, len(labels) + 1)
    except ModelPackageError as err:
        raise ModelPackageError(f"the card's nnunet network cannot be built: {err}") from err
    _compare_shapes(tensors, expected, f"the card's nnU-Net network ({card.nnunet.network_class})")


def _list_files(root: Path) -> list[str]:
    files: list[str] = []
    total_bytes = 0
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise ModelPackageError(f"{rel} is a symbolic link; a package holds plain files only")
        if path.is_dir():
            continue
        if path.name in IGNORED_NAMES:
            continue
        files.append(rel)
        total_bytes += path.stat().st_size
    if len(files) > MAX_FILES:
        raise ModelPackageError(f"package holds {len(files)} files; at most {MAX_FILES} allowed")
    if total_bytes > MAX_TOTAL_BYTES:
        raise ModelPackageError(
            f"package holds {total_bytes} bytes; at most {MAX_TOTAL_BYTES} allowed"
        )
    return files


def check_package_dir(root: Path) -> CheckedPackage:
    """Run every import check on a package folder.

    Parameters
    ----------
    root
        Folder with ``model.yaml`` at its top.

    Raises
    ------
    ModelPackageError
        With the first reason the package is refused.
    """
    if not (root / CARD_FILE).is_file():
        raise ModelPackageError(
            f"{root} has no {CARD_FILE}; a model package is a folder or zip with {CARD_FILE} "
            f"and {WEIGHTS_FILE} at its top"
        )
    files = _list_files(root)
    for rel in files:
        check_file(rel, root / rel)
    card_text = (root / CARD_FILE).read_text(encoding="utf-8")
    card = parse_card(card_text, source=f"{root.name}/{CARD_FILE}")
    weights_sha256: str | None = None
    if card.model_type in ("unet", "nnunet"):
        if WEIGHTS_FILE not in files:
            raise ModelPackageError(
                f"{root} is a {card.model_type!r} model but has no {WEIGHTS_FILE}; add the "
                "weights saved with safetensors.torch.save_file"
            )
        header = read_safetensors_header(root / WEIGHTS_FILE)
        if card.model_type == "unet":
            check_weights_match_card(header, card)
        else:
            check_nnunet_weights_match_card(header, card)
        weights_sha256 = sha256_file(root / WEIGHTS_FILE)
    elif WEIGHTS_FILE in files:
        raise ModelPackageError(
            f"{root} is a 'classical' model ({card.algorithm}) and has no weights; "
            f"remove {WEIGHTS_FILE} or set model_type: unet"
        )
    return CheckedPackage(
        root=root,
        card=card,
        card_sha256=sha256_file(root / CARD_FILE),
        weights_sha256=weights_sha256,
        files=tuple(files),
        warnings=tuple(check_roi_names(card.rois)),
    )


def _safe_member_path(name: str) -> PurePosixPath | None:
    """The member's relative path, ``None`` for skipped entries; raises on unsafe ones."""
    if name.startswith(IGNORED_ZIP_PREFIXES) or PurePosixPath(name).name in IGNORED_NAMES:
        return None
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise ModelPackageError(
            f"zip member {name!r} has an absolute or '..' path; refusing to extract outside "
            "the package folder"
        )
    return pure


def extract_zip(zip_path: Path, dest: Path) -> Path:
    """Extract a package zip safely into ``dest`` and return the package root.

    The root is ``dest`` itself or, when the zip holds a single top folder, that
    folder.

    Raises
    ------
    ModelPackageError
        For unreadable zips, unsafe member paths, symlinks, or too many/large files.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ModelPackageError(f"{zip_path} is not a readable zip file: {err}") from err
    with archive:
        members = archive.infolist()
        if len(members) > MAX_FILES * 2:
            raise ModelPackageError(f"{zip_path} holds {len(members)} entries; too many")
        total = sum(m.file_size for m in members)
        if total > MAX_TOTAL_BYTES:
            raise ModelPackageError(f"{zip_path} unpacks to {total} bytes; too large")
        for member in members:
            rel = _safe_member_path(member.filename)
            if rel is None or member.is_dir():
                continue
            if stat.S_ISLNK(member.external_attr >> 16):
                raise ModelPackageError(
                    f"zip member {member.filename!r} is a symbolic link; packages hold plain files"
                )
            target = dest.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    if (dest / CARD_FILE).exists():
        return dest
    entries = [p for p in dest.iterdir()]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / CARD_FILE).exists():
        return entries[0]
    raise ModelPackageError(f"{zip_path} has no {CARD_FILE} at its top or in a single top folder")


@contextmanager
def open_package(path: Path) -> Iterator[CheckedPackage]:
    """Open and check a package folder or zip.

    A zip is extracted into a temporary folder that is removed when the
    ``with`` block ends; copy what you need inside it.

    Raises
    ------
    ModelPackageError
        When the path is neither a folder nor a zip, or any check fails.
    """
    path = Path(path)
    if path.is_dir():
        yield check_package_dir(path)
    elif path.is_file() and zipfile.is_zipfile(path):
        with tempfile.TemporaryDirectory(prefix="contourd-package-") as tmp:
            yield check_package_dir(extract_zip(path, Path(tmp)))
    elif not path.exists():
        raise ModelPackageError(f"model package {path} does not exist")
    else:
        raise ModelPackageError(
            f"{path} is neither a folder nor a zip; a model package is a folder or .zip "
            f"with {CARD_FILE} and {WEIGHTS_FILE}"
        )
