"""Warm start (``init_weights``): a run begins from earlier weights, or says why it cannot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from training_helpers import tiny_training_config

from contourd.errors import TrainingError
from training.trainer import Trainer


def test_warm_start_loads_fp16_weights_into_the_fresh_model(tmp_path: Path) -> None:
    source = Trainer(tiny_training_config(tmp_path, ["A", "B"]), tmp_path / "run1", device="cpu")
    torch.nn.init.constant_(source.model.head.weight, 0.25)
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.half().contiguous() for k, v in source.model.state_dict().items()}, weights)

    fresh = Trainer(tiny_training_config(tmp_path, ["A", "B"]), tmp_path / "run2", device="cpu")
    assert not torch.equal(fresh.model.head.weight, source.model.head.weight)
    fresh.load_initial_weights(weights)
    for key, value in source.model.state_dict().items():
        expected = value.half().to(value.dtype)
        assert fresh.model.state_dict()[key].dtype == value.dtype
        assert torch.equal(fresh.model.state_dict()[key], expected), key


def test_warm_start_from_another_architecture_names_the_mismatch(tmp_path: Path) -> None:
    source = Trainer(tiny_training_config(tmp_path, ["A", "B"]), tmp_path / "run1", device="cpu")
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, weights)
    three_rois_config = tiny_training_config(tmp_path, ["A", "B", "C"])
    three_rois = Trainer(three_rois_config, tmp_path / "run2", device="cpu")
    with pytest.raises(TrainingError, match="does not fit this run's U-Net.*head"):
        three_rois.load_initial_weights(weights)
    with pytest.raises(TrainingError, match="does not exist"):
        three_rois.load_initial_weights(tmp_path / "missing.safetensors")
