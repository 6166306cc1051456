"""Built-in models in fresh data folders, and TG-263 naming."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from model_store_helpers import copy_builtin_body, unet_card, write_package

from model_store.registry import ModelRegistry
from model_store.tg263 import check_roi_names, is_tg263_name, suggest, tg263_names


def test_fresh_data_folder_lists_the_shipped_body_model_unapproved(tmp_path: Path) -> None:
    with ModelRegistry(tmp_path / "var") as registry:  # the real shipped built-ins
        records = {r.name: r for r in registry.list_models()}
    body = records["body"]
    assert body.status == "imported" and body.builtin
    assert body.card.model_type == "classical" and body.card.algorithm == "body_outline"
    assert body.weights_sha256 is None
    assert body.card.parameters is not None and body.card.parameters.threshold_hu == -350
    assert body.card.parameters.keep_largest_component and body.card.parameters.fill_holes
    (roi,) = body.card.rois
    assert (roi.label, roi.name, roi.interpreted_type, roi.tg263_name) == (
        1,
        "BODY",
        "EXTERNAL",
        "External",
    )
    hn = Path(__file__).resolve().parents[2] / "model_store/builtin/hn-oar/model.yaml"
    assert ("hn-oar" in records) == hn.exists()


def test_builtins_register_once_and_a_package_added_later_is_picked_up(tmp_path: Path) -> None:
    builtin = tmp_path / "builtin"
    copy_builtin_body(builtin)
    data_dir = tmp_path / "var"
    with ModelRegistry(data_dir, builtin_dir=builtin) as registry:
        registry.approve("body", "1.0.0", by="a")
        assert [r.name for r in registry.list_models()] == ["body"]

    write_package(builtin / "hn-oar", unet_card(name="hn-oar"))  # the training owner adds it
    with ModelRegistry(data_dir, builtin_dir=builtin) as registry:
        records = {r.name: r for r in registry.list_models()}
        assert records["body"].status == "approved"  # not re-registered
        assert records["hn-oar"].status == "imported" and records["hn-oar"].builtin
        imports = [e for e in registry.audit_trail() if e.action == "import"]
        assert [(e.name, e.by) for e in imports] == [
            ("body", "contourd (built-in)"),
            ("hn-oar", "contourd (built-in)"),
        ]


def test_broken_builtin_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    builtin = tmp_path / "builtin"
    copy_builtin_body(builtin)
    card = unet_card(name="hn-oar")
    card["architecture"]["num_classes"] = 4  # weights have 3 channels
    write_package(builtin / "hn-oar", card, weights_arch=unet_card()["architecture"])
    (builtin / "half-written").mkdir()  # no model.yaml yet: ignored

    with (
        caplog.at_level(logging.WARNING),
        ModelRegistry(tmp_path / "var", builtin_dir=builtin) as r,
    ):
        assert [m.name for m in r.list_models()] == ["body"]
    assert "built-in model in" in caplog.text and "hn-oar" in caplog.text


def test_tg263_list_holds_common_organs_and_targets() -> None:
    names = set(tg263_names())
    assert len(names) == len(tg263_names()) > 300
    for name in ["External", "Brainstem", "SpinalCord", "Parotid_L", "Bone_Mandible",
                 "Esophagus", "Larynx", "OpticChiasm", "Lung_L", "Heart", "Bladder",
                 "Rectum", "Femur_Head_L", "PTV", "CTV", "GTV"]:  # fmt: skip
        assert is_tg263_name(name), name
    assert not is_tg263_name("parotid_l")  # TG-263 names are case-sensitive
    assert not is_tg263_name("BODY")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("parotid_l", "Parotid_L"),
        ("Parotid Left", "Parotid_L"),
        ("Spinal Cord", "SpinalCord"),
        ("Brain Stem", "Brainstem"),
        ("Mandible_Bone", "Bone_Mandible"),
    ],
)
def test_closest_tg263_names_are_suggested(name: str, expected: str) -> None:
    assert expected in suggest(name)


def test_roi_name_warnings_suggest_and_never_fail() -> None:
    card = unet_card()
    card["rois"][0].update(name="Lt Parotid", tg263_name="Parotid_L")
    card["rois"][1].update(name="Parotid_R", tg263_name="Parotid_Right")
    from model_store.card import ModelCard

    warnings = check_roi_names(ModelCard.model_validate(card).rois)
    assert len(warnings) == 2
    assert "'Lt Parotid' is not a TG-263 name" in warnings[0] and "Parotid_L" in warnings[0]
    assert "tg263_name 'Parotid_Right' is not a TG-263 name" in warnings[1]
    assert "Parotid_R" in warnings[1]


def _open_registry(data_dir: str) -> int:
    with ModelRegistry(Path(data_dir)) as registry:
        return len(registry.list_models())


def test_processes_opening_a_fresh_data_folder_together_register_builtins_once(
    tmp_path: Path,
) -> None:
    import multiprocessing

    data_dir = tmp_path / "var"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        counts = pool.map(_open_registry, [str(data_dir)] * 3, chunksize=1)

    assert all(c >= 1 for c in counts)
    with ModelRegistry(data_dir) as registry:
        imports = [e for e in registry.audit_trail("body") if e.action == "import"]
        assert len(imports) == 1
        assert [r.name for r in registry.list_models()].count("body") == 1
    leftovers = [p.name for p in (data_dir / "models" / "body").iterdir()]
    assert leftovers == ["1.0.0"]
