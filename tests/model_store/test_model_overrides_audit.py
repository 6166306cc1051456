"""A clinic's ROI overrides (what the RTSTRUCT writer uses) and the audit trail."""

from __future__ import annotations

from pathlib import Path

import pytest

from contourd.errors import ModelRegistryError
from model_store.package import sha256_file
from model_store.registry import ModelRegistry


@pytest.fixture
def approved(registry: ModelRegistry, unet_package: Path) -> ModelRegistry:
    registry.import_package(unet_package, by="importer")
    registry.approve("tiny-hn", "1.0.0", by="Dr Who")
    return registry


def test_overrides_change_effective_names_colours_and_types_not_the_package(
    approved: ModelRegistry,
) -> None:
    card_file = approved.data_dir / "models/tiny-hn/1.0.0/model.yaml"
    card_sha = sha256_file(card_file)

    roi, warnings = approved.set_roi(
        "tiny-hn", "1.0.0", 1, by="physicist", roi_name="Parotid Lt", color=(10, 20, 30)
    )
    approved.set_roi("tiny-hn", "1.0.0", 2, by="physicist", interpreted_type="AVOIDANCE")

    model = approved.resolve_approved("tiny-hn")  # still approved, hash still matches
    rois = {r.label: r for r in model.effective_rois()}
    assert (rois[1].name, rois[1].color, rois[1].interpreted_type) == (
        "Parotid Lt",
        (10, 20, 30),
        "ORGAN",
    )
    assert (rois[2].name, rois[2].color, rois[2].interpreted_type) == (
        "Parotid_R",
        (0, 0, 255),
        "AVOIDANCE",
    )
    assert rois[1].laterality == "L" and rois[1].volume_range_cc == (5.0, 60.0)
    assert [r.name for r in model.card.rois] == ["Parotid_L", "Parotid_R"]  # card untouched
    assert sha256_file(card_file) == card_sha
    assert roi == rois[1]
    assert warnings and "closest: Parotid_L" in warnings[0]


def test_later_override_keeps_earlier_fields_and_reset_restores_the_card(
    approved: ModelRegistry,
) -> None:
    approved.set_roi("tiny-hn", "1.0.0", 1, by="a", roi_name="PAROTID_L_AI")
    approved.set_roi("tiny-hn", "1.0.0", 1, by="a", color=[1, 2, 3])
    roi = approved.resolve_approved("tiny-hn").effective_rois()[0]
    assert (roi.name, roi.color) == ("PAROTID_L_AI", (1, 2, 3))

    approved.set_roi("tiny-hn", "1.0.0", 1, by="a", reset=True)
    roi = approved.resolve_approved("tiny-hn").effective_rois()[0]
    assert (roi.name, roi.color) == ("Parotid_L", (255, 0, 0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label": 7, "roi_name": "X"}, "no ROI label 7"),
        ({"label": 1, "roi_name": "Parotid_R"}, "already used by another ROI"),
        ({"label": 1, "color": (256, 0, 0)}, "0-255"),
        ({"label": 1, "interpreted_type": "KIDNEY"}, "not an RT ROI Interpreted Type"),
        ({"label": 1, "roi_name": "a\\b"}, "without a backslash"),
        ({"label": 1}, "needs --name, --color, --type or --reset"),
    ],
)
def test_invalid_overrides_are_refused_and_not_stored(
    approved: ModelRegistry, kwargs: dict[str, object], message: str
) -> None:
    kwargs = dict(kwargs)  # the parameter dict is shared by both backends' runs
    label = kwargs.pop("label")
    with pytest.raises(ModelRegistryError, match=message):
        approved.set_roi("tiny-hn", "1.0.0", label, by="a", **kwargs)  # type: ignore[arg-type]
    assert approved.get("tiny-hn", "1.0.0").overrides == {}
    assert [e.action for e in approved.audit_trail()] == ["import", "approve"]


def test_every_change_is_audited_with_who_when_before_and_after(
    approved: ModelRegistry, tmp_path: Path
) -> None:
    approved.set_roi("tiny-hn", "1.0.0", 2, by="physicist", roi_name="Parotid Rt", note="local")
    approved.export("tiny-hn", "1.0.0", tmp_path / "out.zip", by="exporter")
    approved.retire("tiny-hn", "1.0.0", by="Dr No", note="replaced")

    trail = approved.audit_trail("tiny-hn", "1.0.0")

    assert [(e.action, e.by) for e in trail] == [
        ("import", "importer"),
        ("approve", "Dr Who"),
        ("set-roi", "physicist"),
        ("export", "exporter"),
        ("retire", "Dr No"),
    ]
    imp, appr, setroi, export, retire = trail
    assert imp.before is None and imp.after is not None
    assert imp.after["weights_sha256"] == approved.get("tiny-hn").weights_sha256
    assert appr.before == {
        "status": "imported",
        "approved_by": None,
        "approved_at": None,
        "retired_by": None,
        "retired_at": None,
    }
    assert appr.after is not None and appr.after["status"] == "approved"
    assert appr.after["approved_weights_sha256"] == imp.after["weights_sha256"]
    assert setroi.label == 2 and setroi.note == "local"
    assert setroi.before == {"name": "Parotid_R", "color": [0, 0, 255], "interpreted_type": "ORGAN"}
    assert setroi.after == {"name": "Parotid Rt", "color": [0, 0, 255], "interpreted_type": "ORGAN"}
    assert export.after == {"dest": str((tmp_path / "out.zip").resolve())}
    assert retire.before is not None and retire.before["status"] == "approved"
    assert retire.after is not None and retire.after["status"] == "retired"
    assert retire.note == "replaced"
    assert all(e.at.endswith("+00:00") for e in trail)
    assert [e.id for e in trail] == sorted(e.id for e in trail)


def test_exported_zip_reimports_identically_without_overrides(
    approved: ModelRegistry, tmp_path: Path
) -> None:
    approved.set_roi("tiny-hn", "1.0.0", 1, by="a", roi_name="Local name")
    zip_path = approved.export("tiny-hn", "1.0.0", tmp_path / "share" / "tiny.zip", by="a")
    folder = approved.export("tiny-hn", "1.0.0", tmp_path / "share" / "folder", by="a")
    original = approved.get("tiny-hn", "1.0.0")

    with ModelRegistry(tmp_path / "other-clinic", builtin_dir=None) as other:
        record = other.import_package(zip_path, by="b")
        assert record.weights_sha256 == original.weights_sha256
        assert record.card_sha256 == original.card_sha256
        assert record.effective_rois()[0].name == "Parotid_L"
    assert sha256_file(folder / "weights.safetensors") == original.weights_sha256
    with pytest.raises(ModelRegistryError, match="exists"):
        approved.export("tiny-hn", "1.0.0", zip_path, by="a")
