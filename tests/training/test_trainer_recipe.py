"""hn-oar 2.0 recipe pieces: L/R mirroring, best-by-Dice, the GPU case bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from training_helpers import tiny_training_config

from contourd.errors import TrainingError
from training.device_bundle import read_cases, write_cases
from training.openkbp_dataset import TrainingCase
from training.trainer import Trainer, TrainingConfig, main, mirror_left_right

ROIS = ["Brainstem", "Parotid_L", "Parotid_R"]


def config(tmp_path: Path, **overrides: object) -> TrainingConfig:
    return tiny_training_config(tmp_path, ROIS, **overrides)


def test_mirror_class_order_swaps_only_left_right_pairs(tmp_path: Path) -> None:
    assert config(tmp_path).mirror_class_order() == [0, 1, 3, 2]


def test_mirror_flips_x_and_swaps_the_pair_labels_and_known_flags(tmp_path: Path) -> None:
    image = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    labels = torch.zeros(2, 3, 4, dtype=torch.long)
    labels[:, :, 0] = 2  # Parotid_L in column 0 (patient right side of the array)
    labels[:, :, 3] = 1  # Brainstem in the last column
    known = torch.tensor([True, True, True, False])  # Parotid_R not contoured
    order = torch.tensor(config(tmp_path).mirror_class_order())
    img_m, lab_m, known_m = mirror_left_right(image, labels, known, order)
    assert torch.equal(img_m[..., 0], image[..., 3])
    assert (lab_m[:, :, 3] == 3).all()  # Parotid_L mirrored becomes Parotid_R
    assert (lab_m[:, :, 0] == 1).all()  # Brainstem keeps its label
    assert known_m.tolist() == [True, True, False, True]
    # Mirroring twice gives the patch back.
    again = mirror_left_right(img_m, lab_m, known_m, order)
    assert torch.equal(again[0], image) and torch.equal(again[1], labels)
    assert torch.equal(again[2], known)


def test_best_checkpoint_follows_the_configured_criterion(tmp_path: Path) -> None:
    by_dice = Trainer(config(tmp_path, select_best_by="mean_dice"), tmp_path / "a", "cpu")
    by_loss = Trainer(config(tmp_path), tmp_path / "b", "cpu")
    first = {"val_loss": 0.5, "dice_Brainstem": 0.6, "dice_Parotid_L": float("nan")}
    second = {"val_loss": 0.6, "dice_Brainstem": 0.7, "dice_Parotid_L": float("nan")}
    assert by_dice.improved(dict(first)) and by_loss.improved(dict(first))
    assert by_dice.improved(dict(second))  # higher Dice, higher loss
    assert not by_loss.improved(dict(second))
    assert by_dice.best_mean_dice == pytest.approx(0.7)


def synthetic_case(case_id: str, rng: np.random.Generator) -> TrainingCase:
    image = rng.integers(-1024, 1500, size=(16, 20, 20)).astype(np.int16)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[4:10, 5:9, 2:6] = 2
    labels[4:10, 5:9, 14:18] = 3
    labels[6:12, 8:12, 8:12] = 1
    return TrainingCase(case_id, image, labels, np.array([True, True, True, True]))


def test_bundle_round_trip_clips_hu_and_keeps_the_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train = [synthetic_case(f"pt_{i}", rng) for i in range(3)]
    val = [synthetic_case("pt_9", rng)]
    path = tmp_path / "cases.npz"
    write_cases(path, train, val, (-500.0, 500.0))
    got_train, got_val = read_cases(path)
    assert [c.case_id for c in got_train] == ["pt_0", "pt_1", "pt_2"]
    assert [c.case_id for c in got_val] == ["pt_9"]
    np.testing.assert_array_equal(got_train[1].image_hu, np.clip(train[1].image_hu, -500, 500))
    np.testing.assert_array_equal(got_val[0].labels, val[0].labels)
    with pytest.raises(TrainingError, match="does not exist"):
        read_cases(tmp_path / "missing.npz")


def test_trainer_runs_from_a_bundle_and_writes_best_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    bundle = tmp_path / "cases.npz"
    write_cases(bundle, [synthetic_case(f"pt_{i}", rng) for i in range(3)],
                [synthetic_case("pt_9", rng)], (-500.0, 500.0))  # fmt: skip
    cfg = config(tmp_path, max_steps=4, validate_every=2, checkpoint_every=2,
                 mirror_probability=0.5, select_best_by="mean_dice",
                 optimizer="adamw", learning_rate=0.001)  # fmt: skip
    raw = json.loads(cfg.model_dump_json())
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["--config", str(cfg_path), "--run-dir", str(run), "--cases", str(bundle),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert (run / "best.safetensors").is_file()
    history = json.loads((run / "checkpoint.json").read_text())["history"]
    assert [h["step"] for h in history] == [2, 4]
    assert all("mean_dice" in h for h in history)
