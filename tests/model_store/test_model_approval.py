"""Approval, retirement, resolving for runs, and refusal of changed files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from model_store_helpers import copy_builtin_body, save_unet_weights, unet_card, write_package

from contourd.errors import (
    ModelIntegrityError,
    ModelNotApprovedError,
    ModelNotFoundError,
    ModelRegistryError,
)
from inference.unet import UNet3D
from model_store.registry import ModelRegistry


def _writable(path: Path) -> Path:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return path


def _import_versions(registry: ModelRegistry, tmp_path: Path, *versions: str) -> None:
    for version in versions:
        pkg = write_package(tmp_path / f"pkg-{version}", unet_card(version=version))
        registry.import_package(pkg, by="importer")


def test_imported_model_is_not_usable_until_approved(
    registry: ModelRegistry, unet_package: Path
) -> None:
    registry.import_package(unet_package, by="importer")
    with pytest.raises(ModelNotApprovedError, match="approve it with `contourd models approve"):
        registry.resolve_approved("tiny-hn", "1.0.0")
    with pytest.raises(ModelNotApprovedError, match=r"no approved version.*1\.0\.0 \(imported\)"):
        registry.resolve_approved("tiny-hn")

    record = registry.approve("tiny-hn", "1.0.0", by="Dr Who", note="commissioning report 7")
    model = registry.resolve_approved("tiny-hn")

    assert record.status == "approved" and record.approved_by == "Dr Who"
    assert record.approved_weights_sha256 == record.weights_sha256
    assert model.is_approved and model.version == "1.0.0"
    assert model.approved_by == "Dr Who" and model.approved_at == record.approved_at
    assert model.weights_path == registry.data_dir / "models/tiny-hn/1.0.0/weights.safetensors"


def test_newest_approved_version_is_resolved_and_retired_ones_are_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    _import_versions(registry, tmp_path, "1.0.0", "1.2.0", "1.10.0", "2.0.0-rc.1")
    registry.approve("tiny-hn", "1.0.0", by="a")
    registry.approve("tiny-hn", "1.10.0", by="a")
    registry.approve("tiny-hn", "1.2.0", by="a")
    assert registry.resolve_approved("tiny-hn").version == "1.10.0"  # semver, not text order

    registry.retire("tiny-hn", "1.10.0", by="b", note="superseded")
    assert registry.resolve_approved("tiny-hn").version == "1.2.0"
    with pytest.raises(ModelNotApprovedError, match="1.10.0 is 'retired'.*approved version.*1.2.0"):
        registry.resolve_approved("tiny-hn", "1.10.0")
    assert registry.get("tiny-hn").version == "2.0.0-rc.1"  # newest of any status

    registry.approve("tiny-hn", "1.10.0", by="c")  # a retired version may come back
    assert registry.resolve_approved("tiny-hn").version == "1.10.0"
    assert registry.get("tiny-hn", "1.10.0").retired_by is None


def test_approving_twice_or_retiring_twice_is_refused(
    registry: ModelRegistry, unet_package: Path
) -> None:
    registry.import_package(unet_package, by="a")
    registry.approve("tiny-hn", "1.0.0", by="a")
    with pytest.raises(ModelRegistryError, match=r"already approved \(by a at"):
        registry.approve("tiny-hn", "1.0.0", by="b")
    registry.retire("tiny-hn", "1.0.0", by="a")
    with pytest.raises(ModelRegistryError, match="already retired"):
        registry.retire("tiny-hn", "1.0.0", by="b")
    with pytest.raises(ModelRegistryError, match="--by"):
        registry.approve("tiny-hn", "1.0.0", by="  ")


def test_unknown_model_or_version_names_what_exists(
    registry: ModelRegistry, unet_package: Path
) -> None:
    registry.import_package(unet_package, by="a")
    with pytest.raises(ModelNotFoundError, match="no model named 'hn-oar'.*known: tiny-hn"):
        registry.resolve_approved("hn-oar")
    with pytest.raises(ModelNotFoundError, match="no version '9.9.9'.*registered: 1.0.0"):
        registry.approve("tiny-hn", "9.9.9", by="a")


def test_weights_changed_after_approval_refuse_to_run(
    registry: ModelRegistry, unet_package: Path
) -> None:
    registry.import_package(unet_package, by="a")
    registry.approve("tiny-hn", "1.0.0", by="Dr Who")
    weights = _writable(registry.data_dir / "models/tiny-hn/1.0.0/weights.safetensors")
    save_unet_weights(weights, seed=1)  # same architecture, other values

    with pytest.raises(ModelIntegrityError) as info:
        registry.resolve_approved("tiny-hn")
    message = str(info.value)
    assert "weights" in message and "when Dr Who approved it" in message
    assert "refuses to run" in message


def test_load_state_dict_checks_the_bytes_it_loads(
    registry: ModelRegistry, unet_package: Path
) -> None:
    registry.import_package(unet_package, by="a")
    registry.approve("tiny-hn", "1.0.0", by="a")
    model = registry.resolve_approved("tiny-hn")

    state = model.load_state_dict()
    assert model.card.architecture is not None
    net = UNet3D(model.card.architecture)
    net.load_state_dict(state)  # strict: every key and shape matches
    assert torch.equal(state["head.bias"], net.state_dict()["head.bias"])

    save_unet_weights(_writable(model.weights_path), seed=2)  # type: ignore[arg-type]
    with pytest.raises(ModelIntegrityError, match="sha256"):
        model.load_state_dict()


def test_deleted_weights_refuse_to_run(registry: ModelRegistry, unet_package: Path) -> None:
    registry.import_package(unet_package, by="a")
    registry.approve("tiny-hn", "1.0.0", by="a")
    os.remove(registry.data_dir / "models/tiny-hn/1.0.0/weights.safetensors")
    with pytest.raises(ModelIntegrityError, match="missing"):
        registry.resolve_approved("tiny-hn")


def test_package_changed_between_import_and_approval_cannot_be_approved(
    registry: ModelRegistry, unet_package: Path
) -> None:
    registry.import_package(unet_package, by="a")
    save_unet_weights(
        _writable(registry.data_dir / "models/tiny-hn/1.0.0/weights.safetensors"), seed=3
    )
    with pytest.raises(ModelIntegrityError, match="refusing to approve"):
        registry.approve("tiny-hn", "1.0.0", by="a")
    assert registry.get("tiny-hn", "1.0.0").status == "imported"


def test_classical_model_has_no_weights_and_its_card_hash_is_checked(tmp_path: Path) -> None:
    builtin = tmp_path / "builtin"
    copy_builtin_body(builtin)
    with ModelRegistry(tmp_path / "var", builtin_dir=builtin) as registry:
        registry.approve("body", "1.0.0", by="a")
        model = registry.resolve_approved("body")
        assert model.weights_path is None and model.weights_sha256 is None
        with pytest.raises(ValueError, match="classical model.*no weights"):
            model.load_state_dict()

        card = _writable(model.package_dir / "model.yaml")
        card.write_text(card.read_text().replace("threshold_hu: -350", "threshold_hu: 200"))
        with pytest.raises(ModelIntegrityError, match="card .*model.yaml has sha256"):
            registry.resolve_approved("body")


def test_unapproved_version_can_be_resolved_for_evaluation_only_explicitly(
    registry: ModelRegistry, unet_package: Path
) -> None:
    registry.import_package(unet_package, by="a")
    model = registry.resolve("tiny-hn", require_approved=False)
    assert model.status == "imported" and not model.is_approved
    assert model.approved_by is None
    assert set(model.load_state_dict()) >= {"head.weight", "head.bias"}


def test_approving_once_approves_for_every_process_sharing_the_database(
    registry: ModelRegistry, unet_package: Path
) -> None:
    """A second registry (another worker's connection) sees the approval at once."""
    registry.import_package(unet_package, by="physicist")
    other = ModelRegistry(registry.data_dir, builtin_dir=None, database=registry.database)
    try:
        with pytest.raises(ModelNotApprovedError):
            other.resolve_approved("tiny-hn")
        registry.approve("tiny-hn", "1.0.0", by="physicist", note="commissioned")
        assert other.resolve_approved("tiny-hn").version == "1.0.0"
        assert [e.action for e in other.audit_trail("tiny-hn")] == ["import", "approve"]
    finally:
        other.close()
