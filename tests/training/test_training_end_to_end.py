"""Train a tiny model from a DICOM CT + RTSTRUCT export built here, package, approve, segment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from training_helpers import CLINIC_NAMES, write_dicom_case

from daemon.cli import main as contourd
from inference.pipeline import segment_series
from model_store.package import open_package
from model_store.registry import ModelRegistry
from training.metrics import dice

ROIS = ["Parotid_L", "Parotid_R", "SpinalCord"]


@pytest.mark.slow
def test_tiny_model_trains_from_dicom_export_and_its_package_imports_approves_and_segments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = tmp_path / "export"
    truth = {}
    for seed in range(5):
        # Case 3 has no cord contour at all, case 4 an empty one: both unknown there.
        drop = ("Cord",) if seed == 3 else ()
        empty = ("Cord",) if seed == 4 else ()
        truth[f"case{seed}"] = write_dicom_case(
            dataset / f"case{seed}", seed, drop=drop, empty=empty
        )
    out = tmp_path / "tiny-oar"
    settings = {
        "base_channels": 4, "levels": 2, "patch_size": "[16,32,32]", "spacing_mm": "[4,4,5]",
        "batch_size": 2, "validate_every": 10, "learning_rate": 0.02, "momentum": 0.9,
        "validation_fraction": 0.2, "early_stop_patience": 10,
    }  # fmt: skip
    args = ["train", "--dataset", str(dataset), "--rois", *ROIS, "--out", str(out)]
    args += ["--steps", "30", "--threads", "1", "--version", "0.1.0", "--device", "cpu"]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    assert contourd(args) == 0

    history = json.loads((tmp_path / "tiny-oar-run" / "checkpoint.json").read_text())["history"]
    assert [h["step"] for h in history] == [10, 20, 30]
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]

    with open_package(out) as checked:
        card = checked.card
        assert card.name == "tiny-oar"
        assert [r.name for r in card.rois] == ROIS
        assert [r.laterality for r in card.rois] == ["L", "R", None]
        assert card.preprocessing is not None and card.architecture is not None
        assert list(card.preprocessing.spacing_mm) == [4.0, 4.0, 5.0]
        assert card.architecture.base_channels == 4 and card.architecture.levels == 2
        assert card.training is not None and card.training.cases == 4
        assert card.training.validation_cases == 1
        assert card.evaluation is not None and card.evaluation.cases == 1
        for name in ROIS:
            assert name in card.evaluation.per_roi or name == "SpinalCord"
        package_text = "".join(
            (out / f).read_text(errors="replace")
            for f in checked.files
            if f != "weights.safetensors"
        )
    for seed in range(5):
        assert f"TEST{seed}" not in package_text  # no patient IDs
        assert f"case{seed}" not in package_text  # no case keys either
    assert (tmp_path / "tiny-oar-report" / "report.html").is_file()

    registry = ModelRegistry(tmp_path / "var", builtin_dir=None)
    registry.import_package(out, by="physicist")
    registry.approve("tiny-oar", "0.1.0", by="physicist", note="test")
    model = registry.resolve_approved("tiny-oar")
    result = segment_series(dataset / "case0" / "CT", model, device="cpu", num_threads=1)
    assert result.volume.shape == (16, 48, 48)
    got = {r.name: r.mask for r in result.rois}
    assert got, f"the model segmented nothing: {result.warnings}"
    reference = {CLINIC_NAMES[k]: v for k, v in truth["case0"].items()}
    # 30 steps of a 4-channel network: it has started to learn the bright cord,
    # not more. The point is that the whole chain runs on real package files.
    scores = {n: dice(got.get(n, np.zeros_like(m)), m) for n, m in reference.items()}
    assert max(scores.values()) > 0.3, scores

    # `contourd evaluate` finds the model in the registry before or after approval.
    config = tmp_path / "contourd.yaml"
    config.write_text(f"node:\n  data_dir: {tmp_path / 'var'}\n")
    capsys.readouterr()
    code = contourd(
        ["evaluate", "-c", str(config), "-m", "tiny-oar@0.1.0", str(dataset), "--limit", "2",
         "--device", "cpu", "--threads", "1", "--no-progress"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "tiny-oar 0.1.0 (approved)" in printed and "2 cases" in printed
    for name in ROIS:
        assert name in printed
    assert "mean Dice over ROIs" in printed

    # Fine-tuning: a second run starts from the package's (fp16) weights, so its
    # first validation is already better than the first run's was at that step.
    tuned = tmp_path / "tiny-oar-tuned"
    args = ["train", "--dataset", str(dataset), "--rois", *ROIS, "--out", str(tuned)]
    args += ["--steps", "10", "--threads", "1", "--version", "0.2.0", "--device", "cpu"]
    args += ["--init-from", str(out)]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    assert contourd(args) == 0
    tuned_history = json.loads((tmp_path / "tiny-oar-tuned-run" / "checkpoint.json").read_text())
    assert tuned_history["history"][0]["val_loss"] < history[0]["val_loss"]
    with open_package(tuned) as checked:
        assert checked.card.training is not None
        assert "warm-started" in checked.card.training.notes
