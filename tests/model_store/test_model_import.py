"""Import of model packages: folders, zips, and every reason to refuse one."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pydicom
import pytest
import yaml
from model_store_helpers import unet_card, write_package, zip_folder
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from contourd.errors import ModelPackageError, ModelRegistryError
from model_store.card import parse_card
from model_store.package import sha256_file
from model_store.registry import ModelRegistry

SHARED_DICOM = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom"


def _dicom_bytes(*, file_format: bool, implicit: bool = False) -> bytes:
    """A small CT data set with a patient name, as a scanner would write it."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "12345"
    buffer = io.BytesIO()
    if file_format:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.preamble = b"\x00" * 128
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    else:
        pydicom.dcmwrite(
            buffer, ds, implicit_vr=implicit, little_endian=True, enforce_file_format=False
        )
    return buffer.getvalue()


def test_import_of_a_folder_copies_it_and_records_sha256(
    registry: ModelRegistry, unet_package: Path
) -> None:
    record = registry.import_package(unet_package, by="physicist")

    assert (record.name, record.version, record.status) == ("tiny-hn", "1.0.0", "imported")
    stored = registry.data_dir / "models" / "tiny-hn" / "1.0.0"
    assert record.package_dir == stored
    assert record.weights_sha256 == sha256_file(unet_package / "weights.safetensors")
    assert sha256_file(stored / "weights.safetensors") == record.weights_sha256
    assert (stored / "model.yaml").read_bytes() == (unet_package / "model.yaml").read_bytes()
    assert (stored / "README.md").exists()
    assert record.card.body_site == "HEADNECK"
    assert [r.name for r in record.card.rois] == ["Parotid_L", "Parotid_R"]
    assert record.imported_by == "physicist"
    assert not os.access(stored / "weights.safetensors", os.W_OK) or os.geteuid() == 0


@pytest.mark.parametrize("top_folder", [None, "tiny-hn-1.0.0"])
def test_import_of_a_zip_flat_or_with_one_top_folder(
    registry: ModelRegistry, unet_package: Path, tmp_path: Path, top_folder: str | None
) -> None:
    zip_path = zip_folder(unet_package, tmp_path / "tiny.zip", top_folder=top_folder)

    record = registry.import_package(zip_path, by="physicist")

    assert record.weights_sha256 == sha256_file(unet_package / "weights.safetensors")
    assert (record.package_dir / "model.yaml").exists()
    assert record.source == str(zip_path.resolve())


def test_importing_the_same_version_twice_is_refused(
    registry: ModelRegistry, unet_package: Path
) -> None:
    registry.import_package(unet_package, by="a")
    with pytest.raises(ModelRegistryError, match="already registered.*new version"):
        registry.import_package(unet_package, by="a")


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".bin", ".pkl"])
def test_pickle_weights_file_is_refused(
    registry: ModelRegistry, tmp_path: Path, suffix: str
) -> None:
    pkg = write_package(tmp_path / "p", extra_files={f"model{suffix}": b"anything"})
    with pytest.raises(ModelPackageError, match=f"model{suffix} holds pickle weights"):
        registry.import_package(pkg, by="a")
    assert registry.list_models() == []


def test_pickle_disguised_as_text_or_as_safetensors_is_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    payload = pickle.dumps({"head.weight": [1.0, 2.0]}, protocol=4)
    pkg = write_package(tmp_path / "p1", extra_files={"notes.txt": payload})
    with pytest.raises(ModelPackageError, match="notes.txt holds pickle"):
        registry.import_package(pkg, by="a")

    pkg2 = write_package(tmp_path / "p2")
    (pkg2 / "weights.safetensors").write_bytes(payload)
    with pytest.raises(ModelPackageError, match="weights.safetensors holds pickle"):
        registry.import_package(pkg2, by="a")


def test_torch_save_zip_named_safetensors_is_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    import torch

    pkg = write_package(tmp_path / "p")
    torch.save({"head.weight": torch.zeros(3, 4, 1, 1, 1)}, pkg / "weights.safetensors")
    with pytest.raises(ModelPackageError, match="holds pickle weights"):
        registry.import_package(pkg, by="a")


@pytest.mark.parametrize(
    ("filename", "data_kind"),
    [
        ("scan.dcm", "file"),
        ("notes.txt", "file"),  # DICM preamble, innocent name
        ("slice001", "headerless_explicit"),
        ("docs/slice002.txt", "headerless_implicit"),
    ],
)
def test_dicom_inside_a_package_is_refused(
    registry: ModelRegistry, tmp_path: Path, filename: str, data_kind: str
) -> None:
    data = _dicom_bytes(
        file_format=data_kind == "file", implicit=data_kind == "headerless_implicit"
    )
    pkg = write_package(tmp_path / "p", extra_files={filename: data})
    with pytest.raises(ModelPackageError, match=f"{filename} is a DICOM file"):
        registry.import_package(pkg, by="a")
    assert not (registry.data_dir / "models" / "tiny-hn").exists()


def test_dicom_in_a_zip_is_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "p", extra_files={"a/b/IM0001": _dicom_bytes(file_format=True)})
    zip_path = zip_folder(pkg, tmp_path / "p.zip")
    with pytest.raises(ModelPackageError, match="a/b/IM0001 is a DICOM file"):
        registry.import_package(zip_path, by="a")


@pytest.mark.shared_data
def test_real_scanner_dicom_file_is_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    source = SHARED_DICOM / "rtutils-mim-phantom" / "tests" / "mock_data" / "ct_2.dcm"
    if not source.exists():
        pytest.skip(f"needs ../shared/data ({source} missing)")
    pkg = write_package(tmp_path / "p")
    shutil.copyfile(source, pkg / "calibration.json")
    with pytest.raises(ModelPackageError, match="calibration.json is a DICOM file"):
        registry.import_package(pkg, by="a")


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"ct.nii.gz": b"\x1f\x8b\x08\x00gz"}, "image or array data"),
        ({"mask.npy": b"\x93NUMPY"}, "image or array data"),
        ({"README.md": b"Trained on case 7\nPatientName: DOE^JANE\n"}, "looks like patient data"),
        ({"cases.json": b'{"PatientID": "123456"}'}, "looks like patient data"),
        ({"notes.txt": b"see (0010,0020) of the source"}, "looks like patient data"),
        (
            {"notes.txt": b"study 1.2.826.0.1.3680043.8.498.123456789.1.2 was used"},
            "holds a DICOM UID",
        ),
        ({"data.zip": b"PK\x03\x04rest"}, "archive inside the package"),
        ({"run.sh": b"#!/bin/sh\n"}, "not an allowed package file"),
    ],
)
def test_patient_data_and_unexpected_files_are_refused(
    registry: ModelRegistry, tmp_path: Path, extra: dict[str, bytes], reason: str
) -> None:
    pkg = write_package(tmp_path / "p", extra_files=extra)
    with pytest.raises(ModelPackageError, match=reason):
        registry.import_package(pkg, by="a")


def test_text_that_only_mentions_patient_data_is_accepted(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    readme = b"No patient name, ID or birth date is stored. Transfer syntax 1.2.840.10008.1.2.1\n"
    pkg = write_package(tmp_path / "p", extra_files={"NOTES.md": readme})
    assert registry.import_package(pkg, by="a").status == "imported"


def test_card_free_text_with_patient_identifier_is_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    card = unet_card(limitations="validated on patient_id: 998877 only")
    pkg = write_package(tmp_path / "p", card)
    with pytest.raises(ModelPackageError, match="model.yaml line .* patient data"):
        registry.import_package(pkg, by="a")


def test_weights_with_more_output_channels_than_labels_are_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    # Card: 2 ROIs, num_classes 3. Weights: a network trained with 4 classes.
    arch4 = {"in_channels": 1, "num_classes": 4, "base_channels": 4, "levels": 2, "max_channels": 8}
    pkg = write_package(tmp_path / "p", weights_arch=arch4)
    with pytest.raises(ModelPackageError, match=r"ROI labels \[1, 2\] do not match.*4 output chan"):
        registry.import_package(pkg, by="a")
    assert registry.list_models() == []


def test_card_labels_not_matching_num_classes_are_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    card = unet_card()
    card["rois"][1]["label"] = 3  # labels 1, 3 with num_classes 3 (channels 0..2)
    pkg = write_package(tmp_path / "p", card)
    with pytest.raises(ModelPackageError, match=r"ROI labels \[1, 3\] do not match"):
        registry.import_package(pkg, by="a")


def test_weights_of_another_architecture_are_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    wider = {"in_channels": 1, "num_classes": 3, "base_channels": 8, "levels": 2, "max_channels": 8}
    pkg = write_package(tmp_path / "p", weights_arch=wider)
    with pytest.raises(ModelPackageError, match="does not match the card's architecture"):
        registry.import_package(pkg, by="a")


def test_unet_without_weights_and_classical_with_weights_are_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    pkg = write_package(tmp_path / "p", weights=False)
    with pytest.raises(ModelPackageError, match="has no weights.safetensors"):
        registry.import_package(pkg, by="a")

    body = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "model_store/builtin/body/model.yaml").read_text()
    )
    pkg2 = write_package(tmp_path / "p2", body, weights_arch=unet_card()["architecture"])
    with pytest.raises(ModelPackageError, match="classical.*has no weights"):
        registry.import_package(pkg2, by="a")


def test_zip_member_escaping_the_folder_is_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "p")
    zip_path = zip_folder(pkg, tmp_path / "evil.zip")
    with zipfile.ZipFile(zip_path, "a") as archive:
        archive.writestr("../../outside.txt", "x")
    with pytest.raises(ModelPackageError, match="'..' path"):
        registry.import_package(zip_path, by="a")
    assert not (tmp_path / "outside.txt").exists()


def test_symlink_in_a_package_is_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "p")
    (tmp_path / "secret.txt").write_text("x")
    (pkg / "link.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(ModelPackageError, match="symbolic link"):
        registry.import_package(pkg, by="a")


def test_missing_package_and_non_package_file_have_clear_errors(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    with pytest.raises(ModelPackageError, match="does not exist"):
        registry.import_package(tmp_path / "nope", by="a")
    (tmp_path / "w.safetensors").write_bytes(b"x")
    with pytest.raises(ModelPackageError, match="neither a folder nor a zip"):
        registry.import_package(tmp_path / "w.safetensors", by="a")


def test_invalid_card_lists_each_problem_with_its_location() -> None:
    card = unet_card(version="1.0", colour=[1, 2, 3])
    card["rois"][0]["color"] = [300, 0, 0]
    del card["originator"]
    with pytest.raises(ModelPackageError) as info:
        parse_card(yaml.safe_dump(card))
    message = str(info.value)
    assert "version" in message and "originator" in message and "colour" in message
    assert "rois.0.color" in message and "0-255" in message


def test_patch_size_must_fit_the_network_depth() -> None:
    card = unet_card()
    card["preprocessing"]["patch_size"] = [15, 32, 32]
    with pytest.raises(ModelPackageError, match=r"patch_size \[15, 32, 32\] must be a multiple"):
        parse_card(yaml.safe_dump(card))


def test_import_warns_about_names_outside_tg263(registry: ModelRegistry, tmp_path: Path) -> None:
    card = unet_card()
    card["rois"][0]["name"] = "Parotid Left"
    card["rois"][0]["tg263_name"] = None
    pkg = write_package(tmp_path / "p", card)

    record = registry.import_package(pkg, by="a")

    assert record.status == "imported"
    assert len(record.warnings) == 1
    assert "'Parotid Left' is not a TG-263 name" in record.warnings[0]
    assert "Parotid_L" in record.warnings[0]
