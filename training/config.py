"""A training run's settings: :class:`TrainingConfig` and its YAML loader.

Used by :mod:`training.trainer` (the run), :mod:`training.datasets` (which
cases) and :mod:`training.package_export` (the package's card); kept in its
own module so that those import it and not each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contourd.errors import TrainingError
from model_store.card import Architecture


class TrainingConfig(BaseModel):
    """A training run's settings (YAML file, committed beside the model it made)."""

    model_config = ConfigDict(extra="forbid")

    roi_names: list[str]
    roi_sources: list[list[str]]
    train_dir: Path
    validation_dir: Path
    spacing_mm: tuple[float, float, float] = (4.0, 4.0, 2.5)
    patch_size: tuple[int, int, int] = (80, 96, 96)
    batch_size: int = 2
    base_channels: int = 16
    levels: int = 4
    max_channels: int = 256
    optimizer: Literal["sgd", "adamw"] = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.99
    weight_decay: float = 3e-5
    max_steps: int = 3000
    validate_every: int = 150
    validation_cases: int = 12
    early_stop_patience: int = 6
    checkpoint_every: int = 50
    max_hours: float = 2.5
    seed: int = 12345
    threads: int = 2
    foreground_ce_weight: float = 1.0
    min_hu: float = -1000.0
    max_hu: float = 1000.0
    augmentation: dict[str, Any] = Field(default_factory=dict)
    # Added for `contourd train` (training.datasets); defaults keep older YAML valid.
    dataset_format: Literal["auto", "nifti", "dicom"] = "auto"
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    roi_mapping: dict[str, list[str]] = Field(default_factory=dict)
    # Warm start: a safetensors file of UNet3D weights (a run's best.safetensors or a
    # package's weights) loaded before step 0 of a fresh run; ignored when resuming.
    init_weights: Path | None = None
    # Left-right mirroring of training patches (patient x axis) with the labels
    # of each ``*_L``/``*_R`` ROI pair swapped: probability per patch (0: off).
    mirror_probability: float = Field(default=0.0, ge=0, le=1)
    # Which validation figure picks ``best.safetensors``: the lowest Dice + CE
    # loss, or the highest mean hard Dice over the ROIs (what evaluation reports).
    select_best_by: Literal["val_loss", "mean_dice"] = "val_loss"

    def mirror_class_order(self) -> list[int]:
        """Class index -> its class after a left-right mirror (0 is background).

        ROIs whose names differ only in a trailing ``_L``/``_R`` are swapped;
        every other class maps to itself.
        """
        order = list(range(len(self.roi_names) + 1))
        index = {name: i for i, name in enumerate(self.roi_names, start=1)}
        for name, i in index.items():
            if name.endswith("_L") and name[:-2] + "_R" in index:
                j = index[name[:-2] + "_R"]
                order[i], order[j] = j, i
        return order

    def architecture(self) -> Architecture:
        """The network this run trains (the model card's ``architecture`` section)."""
        return Architecture(
            in_channels=1,
            num_classes=len(self.roi_names) + 1,
            base_channels=self.base_channels,
            levels=self.levels,
            max_channels=self.max_channels,
        )


def load_training_config(path: Path) -> TrainingConfig:
    """Read a run's settings YAML; relative folders are relative to the file.

    Raises
    ------
    TrainingError
        When the file is missing, is not YAML or has invalid settings; the
        message lists each bad field.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise TrainingError(
            f"training settings {path} cannot be read ({err.strerror or err}); "
            "give an existing RUN.yaml (see training/configs/)"
        ) from err
    except yaml.YAMLError as err:
        problem = " ".join(str(err).split())
        raise TrainingError(
            f"training settings {path} are not valid YAML ({problem}); fix the file"
        ) from err
    if not isinstance(raw, dict):
        raise TrainingError(
            f"training settings {path} must be a YAML mapping (roi_names:, train_dir:, ...), "
            f"not {type(raw).__name__}"
        )
    config = validate_training_config(raw, str(path))
    base = path.parent
    config.train_dir = (base / config.train_dir).resolve()
    config.validation_dir = (base / config.validation_dir).resolve()
    if config.init_weights is not None:
        config.init_weights = (base / config.init_weights).resolve()
    return config


def validate_training_config(raw: dict[str, Any], source: str) -> TrainingConfig:
    """Validate settings from ``source`` (a file or the command line).

    Raises
    ------
    TrainingError
        One line listing each bad field as ``location: message (got value)``.
    """
    try:
        return TrainingConfig.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or '(settings)'}: {item['msg']}"
            + ("" if item["type"] == "missing" else f" (got {item['input']!r})")
            for item in err.errors()
        )
        raise TrainingError(
            f"training settings in {source} are invalid: {problems}; fix them "
            "(the fields are those of training.config.TrainingConfig, docs/training.md)"
        ) from err
