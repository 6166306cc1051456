"""The model card (``model.yaml``): what a model is, what it expects, what it outputs.

A card is validated with pydantic v2 (``extra="forbid"`` on every section, so a
misspelt key is an error with its location). :func:`parse_card` turns YAML text
into a :class:`ModelCard` and raises :class:`~contourd.errors.ModelPackageError`
with every problem listed.

Conventions
-----------
- ``preprocessing.spacing_mm`` is ``[x, y, z]`` in mm (column, row, slice
  spacing), ``preprocessing.patch_size`` is ``[z, y, x]`` in voxels (array
  order). ``orientation: "LPS"`` means the network sees arrays indexed
  ``[z, y, x]`` with identity direction: +x towards patient left, +y posterior,
  +z superior.
- ROI label 0 is background. For a ``unet`` model the labels are exactly
  ``1 .. architecture.num_classes - 1``; label ``k`` is output channel ``k``.
  An ``nnunet`` model (an imported nnU-Net v2 model, section ``nnunet``, see
  :mod:`model_store.nnunet_card`) has the labels of its ``dataset.json``.
- ``color`` is ``[r, g, b]`` with each component 0-255 (DICOM ROI Display Color).
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from contourd.errors import ModelPackageError
from model_store.nnunet_card import NnunetSettings

#: DICOM RT ROI Interpreted Type (3006,00A4) defined terms (PS3.3 C.8.8.8).
InterpretedType = Literal[
    "EXTERNAL",
    "PTV",
    "CTV",
    "GTV",
    "TREATED_VOLUME",
    "IRRAD_VOLUME",
    "BOLUS",
    "AVOIDANCE",
    "ORGAN",
    "MARKER",
    "REGISTRATION",
    "ISOCENTER",
    "CONTRAST_AGENT",
    "CAVITY",
    "BRACHY_CHANNEL",
    "BRACHY_ACCESSORY",
    "BRACHY_SRC_APP",
    "BRACHY_CHNL_SHLD",
    "SUPPORT",
    "FIXATION",
    "DOSE_REGION",
    "CONTROL",
]
INTERPRETED_TYPES: tuple[str, ...] = InterpretedType.__args__  # type: ignore[attr-defined]

#: Model names become folder names: lower case letters, digits, ``.``, ``_``, ``-``.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
#: Semantic version 2.0.0 (``MAJOR.MINOR.PATCH[-prerelease][+build]``).
SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_SEMVER_RE = re.compile(SEMVER_PATTERN)


class StrictModel(BaseModel):
    """Base of every card section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def validate_roi_name(name: str) -> str:
    """Check an ROI name can be written as DICOM ROI Name (LO: 1-64 chars, no ``\\``).

    Raises
    ------
    ValueError
        With the name and what is allowed.
    """
    stripped = name.strip()
    if not stripped or len(stripped) > 64 or "\\" in stripped or any(ord(c) < 32 for c in stripped):
        raise ValueError(
            f"ROI name {name!r} must be 1-64 printable characters without a backslash "
            "(DICOM ROI Name is a LO value)"
        )
    return stripped


def validate_color(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Check an ``[r, g, b]`` colour has three components in 0-255.

    Raises
    ------
    ValueError
        With the colour and the allowed range.
    """
    if len(color) != 3 or any(not 0 <= int(c) <= 255 for c in color):
        raise ValueError(f"color {list(color)} must be [r, g, b] with each value 0-255")
    return (int(color[0]), int(color[1]), int(color[2]))


class RoiSpec(StrictModel):
    """One structure the model outputs.

    Parameters
    ----------
    label
        Label index in the network output (1..num_classes-1; 0 is background).
    name
        ROI Name written to the RTSTRUCT.
    color
        ROI Display Color ``[r, g, b]``, 0-255 each.
    interpreted_type
        RT ROI Interpreted Type (ORGAN, EXTERNAL, AVOIDANCE, PTV, CTV, ...).
    tg263_name
        The AAPM TG-263 standard name of the structure, if it has one.
    volume_range_cc
        Plausible volume ``[min, max]`` in cm^3; inference warns outside it.
    laterality
        ``"L"`` (patient left, +x in LPS) or ``"R"`` for paired organs; inference
        checks the mask lies on that side.
    """

    label: int = Field(ge=1, le=255)
    name: str
    color: tuple[int, int, int]
    interpreted_type: InterpretedType = "ORGAN"
    tg263_name: str | None = None
    volume_range_cc: tuple[float, float] | None = None
    laterality: Literal["L", "R"] | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return validate_roi_name(value)

    @field_validator("color")
    @classmethod
    def _check_color(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        return validate_color(value)

    @field_validator("volume_range_cc")
    @classmethod
    def _check_volume_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not (0 <= value[0] <= value[1]):
            raise ValueError(
                f"volume_range_cc {list(value)} must be [min, max] with 0 <= min <= max"
            )
        return value


class CtClipScale(StrictModel):
    """Clip HU to ``[min_hu, max_hu]`` and map that range linearly to ``[-1, 1]``."""

    kind: Literal["ct_clip_scale"] = "ct_clip_scale"
    min_hu: float = -1000.0
    max_hu: float = 1000.0

    @model_validator(mode="after")
    def _check_range(self) -> CtClipScale:
        if self.min_hu >= self.max_hu:
            raise ValueError(f"min_hu {self.min_hu} must be below max_hu {self.max_hu}")
        return self


class ZScore(StrictModel):
    """Subtract the image mean and divide by its standard deviation (MR)."""

    kind: Literal["zscore"] = "zscore"


Normalization = Annotated[CtClipScale | ZScore, Field(discriminator="kind")]


class Preprocessing(StrictModel):
    """What the network expects as input.

    Parameters
    ----------
    spacing_mm
        Target voxel spacing ``[x, y, z]`` in mm the image is resampled to.
    orientation
        Always ``"LPS"``: arrays ``[z, y, x]``, identity direction, +x patient
        left, +y posterior, +z superior.
    normalization
        ``{kind: ct_clip_scale, min_hu, max_hu}`` or ``{kind: zscore}``.
    patch_size
        Sliding-window patch ``[z, y, x]`` in voxels.
    """

    spacing_mm: tuple[float, float, float]
    orientation: Literal["LPS"] = "LPS"
    normalization: Normalization = Field(default_factory=CtClipScale)
    patch_size: tuple[int, int, int]

    @field_validator("spacing_mm", "patch_size")
    @classmethod
    def _positive(cls, value: tuple[float, ...], info: ValidationInfo) -> tuple[float, ...]:
        if any(v <= 0 for v in value):
            what = "[x, y, z] in mm" if info.field_name == "spacing_mm" else "[z, y, x] in voxels"
            raise ValueError(f"{info.field_name} {list(value)} must be positive {what}")
        return value


class Architecture(StrictModel):
    """The U-Net's hyperparameters: the card's ``architecture`` section and the network's config.

    The one architecture type: :class:`inference.unet.UNet3D` is built from it
    and :func:`model_store.network_layout.unet_tensor_shapes` derives the
    weights' tensors from it. Immutable once validated.

    Parameters
    ----------
    in_channels
        Image channels (1 for CT or MR).
    num_classes
        Output channels including background (label 0).
    base_channels
        Feature maps at full resolution; doubled at each level.
    levels
        Resolution levels including the full-resolution one.
    max_channels
        Cap on feature maps at deep levels.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_channels: int = Field(default=1, ge=1)
    num_classes: int = Field(ge=2)
    base_channels: int = Field(default=16, ge=1)
    levels: int = Field(default=4, ge=1, le=8)
    max_channels: int = Field(default=256, ge=1)

    def channels_at(self, level: int) -> int:
        """Feature maps at ``level`` (0 = full resolution)."""
        return int(min(self.base_channels * 2**level, self.max_channels))

    @property
    def size_divisor(self) -> int:
        """Every spatial input size must be a multiple of this (voxels)."""
        return int(2 ** (self.levels - 1))


class InferenceSettings(StrictModel):
    """How the worker runs the network over a volume.

    Parameters
    ----------
    strategy
        ``"sliding_window"`` (default): windows of ``preprocessing.patch_size``
        blended with Gaussian weights, the input the network saw in training.
        ``"whole_volume"``: one forward pass over the whole padded volume when
        it has at most ``max_whole_volume_voxels`` voxels, the window otherwise.
        For hn-oar 1.0.0 the window scored mean Dice 0.686 against 0.633 for
        the whole volume on the OpenKBP validation cases (docs/benchmarks.md).
    overlap
        Fraction of a patch shared by neighbouring windows, ``0 <= overlap < 1``.
        0.25 costs about half the network time of nnU-Net's 0.5.
    max_whole_volume_voxels
        Largest padded input (voxels) that ``"whole_volume"`` runs in one pass.
    crop_to_foreground
        Run the network only inside the bounding box of the voxels above the
        normalised input's minimum (for a clipped CT: everything denser than
        ``min_hu``, i.e. the patient and the couch), grown by
        ``crop_margin_voxels``; outside it every voxel is background. On a
        head-and-neck CT this leaves a quarter of the windows.
    crop_margin_voxels
        Margin added on each side of that box, in model-grid voxels.
    mirror_left_right
        Test-time augmentation: also run the network on the input mirrored
        along the patient's left-right axis (model-grid x), mirror that
        output back, swap the classes of each left/right ROI pair (ROIs with
        ``laterality`` whose names differ only in L/R, e.g. Parotid_L and
        Parotid_R) and average the two. Doubles the network time.
    """

    strategy: Literal["sliding_window", "whole_volume"] = "sliding_window"
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    max_whole_volume_voxels: int = Field(default=160 * 160 * 160, ge=1)
    crop_to_foreground: bool = True
    crop_margin_voxels: int = Field(default=4, ge=0)
    mirror_left_right: bool = False

    def describe(self) -> str:
        """One line for people: how the network is run over a volume."""
        text = (
            "whole volume"
            if self.strategy == "whole_volume"
            else f"sliding window, overlap {self.overlap}"
        )
        text += ", cropped to the patient" if self.crop_to_foreground else ", whole grid"
        return text + (", left-right mirror TTA" if self.mirror_left_right else "")


class RoiPostprocessing(StrictModel):
    """Mask clean-up after thresholding the network output."""

    largest_component: bool = False
    fill_holes: bool = False


class BodyOutlineParameters(StrictModel):
    """Parameters of the classical ``body_outline`` algorithm.

    Voxels above ``threshold_hu`` are body; with ``keep_largest_component`` only
    the largest 3D connected component stays (removes the couch and
    immobilisation devices); ``fill_holes`` fills air cavities (lungs, bowel
    gas, sinuses) slice by slice.
    """

    threshold_hu: float = -350.0
    keep_largest_component: bool = True
    fill_holes: bool = True


class TrainingSummary(StrictModel):
    """How the model was trained. Counts and dates only, never identifiers."""

    cases: int = Field(ge=0)
    validation_cases: int | None = Field(default=None, ge=0)
    dataset: str = ""
    started: date | None = None
    finished: date | None = None
    epochs: int | None = Field(default=None, ge=0)
    notes: str = ""


class RoiMetrics(StrictModel):
    """Evaluation figures of one ROI (mean over the evaluation cases)."""

    dice: float | None = Field(default=None, ge=0, le=1)
    hd95_mm: float | None = Field(default=None, ge=0)
    mean_surface_distance_mm: float | None = Field(default=None, ge=0)
    surface_dice: float | None = Field(default=None, ge=0, le=1)
    cases: int | None = Field(default=None, ge=0)


class Evaluation(StrictModel):
    """Evaluation results on held-out cases, keyed by ROI name."""

    dataset: str = ""
    cases: int = Field(default=0, ge=0)
    per_roi: dict[str, RoiMetrics] = Field(default_factory=dict)


def semver_key(version: str) -> tuple[Any, ...]:
    """Sort key following semver precedence (a pre-release sorts before its release).

    Raises
    ------
    ValueError
        If ``version`` is not a semantic version.
    """
    match = _SEMVER_RE.match(version)
    if not match:
        raise ValueError(f"version {version!r} is not a semantic version like 1.2.0")
    major, minor, patch, pre, _build = match.groups()
    if pre is None:
        pre_key: tuple[Any, ...] = (1,)
    else:
        pre_key = (
            0,
            tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")),
        )
    return (int(major), int(minor), int(patch), pre_key)


class ModelCard(StrictModel):
    """The whole ``model.yaml`` of a package. See the module docstring for conventions."""

    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=SEMVER_PATTERN)
    description: str
    intended_use: str
    limitations: str = ""
    originator: str
    institution: str = ""
    license: str = ""
    modality: Literal["CT", "MR"]
    body_site: str = Field(min_length=1, max_length=64)
    model_type: Literal["unet", "classical", "nnunet"]
    algorithm: Literal["body_outline"] | None = None
    parameters: BodyOutlineParameters | None = None
    rois: list[RoiSpec] = Field(min_length=1)
    preprocessing: Preprocessing | None = None
    architecture: Architecture | None = None
    nnunet: NnunetSettings | None = None
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    postprocessing: dict[int, RoiPostprocessing] = Field(default_factory=dict)
    training: TrainingSummary | None = None
    evaluation: Evaluation | None = None

    @field_validator("body_site")
    @classmethod
    def _upper_body_site(cls, value: str) -> str:
        return value.strip().upper()

    @model_validator(mode="after")
    def _check_consistency(self) -> ModelCard:
        labels = [roi.label for roi in self.rois]
        if len(set(labels)) != len(labels):
            raise ValueError(f"ROI labels {labels} must be unique")
        names = [roi.name.lower() for roi in self.rois]
        if len(set(names)) != len(names):
            raise ValueError(f"ROI names {[r.name for r in self.rois]} must be unique")
        unknown = sorted(set(self.postprocessing) - set(labels))
        if unknown:
            raise ValueError(f"postprocessing names labels {unknown} that no ROI has ({labels})")
        if self.model_type != "nnunet" and self.nnunet is not None:
            raise ValueError("the 'nnunet' section is for model_type: nnunet only")
        if self.model_type == "unet":
            self._check_unet(labels)
        elif self.model_type == "nnunet":
            self._check_nnunet()
        else:
            self._check_classical()
        return self

    def _check_unet(self, labels: list[int]) -> None:
        if self.architecture is None or self.preprocessing is None:
            raise ValueError("a 'unet' model needs 'architecture' and 'preprocessing' sections")
        if self.algorithm is not None or self.parameters is not None:
            raise ValueError("'algorithm' and 'parameters' are for classical models only")
        expected = list(range(1, self.architecture.num_classes))
        if sorted(labels) != expected:
            raise ValueError(
                f"ROI labels {sorted(labels)} do not match the network's output channels: "
                f"architecture.num_classes={self.architecture.num_classes} means labels "
                f"{expected} (0 is background); fix the rois list or num_classes"
            )
        divisor = self.architecture.size_divisor
        if any(p % divisor for p in self.preprocessing.patch_size):
            raise ValueError(
                f"patch_size {list(self.preprocessing.patch_size)} must be a multiple of "
                f"{divisor} (2 ** (levels - 1)) on every axis"
            )

    def _check_nnunet(self) -> None:
        if self.nnunet is None:
            raise ValueError("an 'nnunet' model needs its 'nnunet' section (written at import)")
        if self.architecture is not None or self.algorithm is not None or self.parameters:
            raise ValueError(
                "an 'nnunet' model has no 'architecture', 'algorithm' or 'parameters' section; "
                "its network is described in the 'nnunet' section"
            )
        self.nnunet.check_kwargs()

    def _check_classical(self) -> None:
        if self.algorithm is None:
            raise ValueError("a 'classical' model needs 'algorithm' (one of: body_outline)")
        if self.architecture is not None:
            raise ValueError("a 'classical' model has no 'architecture' section")
        if self.parameters is None:
            self.parameters = BodyOutlineParameters()
        if self.algorithm == "body_outline" and len(self.rois) != 1:
            raise ValueError(
                f"body_outline outputs one ROI (label 1), the card lists {len(self.rois)}"
            )

    @property
    def version_key(self) -> tuple[Any, ...]:
        """Semver sort key of :attr:`version`."""
        return semver_key(self.version)

    def postprocessing_for(self, label: int) -> RoiPostprocessing:
        """Post-processing of ROI ``label`` (defaults: no clean-up)."""
        return self.postprocessing.get(label, RoiPostprocessing())

    def mirror_class_order(self) -> list[int]:
        """Class index -> the class it becomes when the patient is mirrored left-right.

        Index 0 is background. ROIs with ``laterality`` are paired by name
        (``Parotid_L`` with ``Parotid_R``: the names with the laterality
        letter removed are equal); every other class maps to itself.
        """
        order = list(range(max(r.label for r in self.rois) + 1))

        def stem(roi: RoiSpec) -> str:
            name = roi.name.lower()
            for mark in ("_l", "_r", " l", " r"):
                if name.endswith(mark):
                    return name[: -len(mark)]
            for mark in ("l_", "r_"):
                if name.startswith(mark):
                    return name[len(mark) :]
            return name

        left = {stem(r): r.label for r in self.rois if r.laterality == "L"}
        for roi in self.rois:
            if roi.laterality == "R" and stem(roi) in left:
                order[roi.label], order[left[stem(roi)]] = left[stem(roi)], roi.label
        return order

    def roi(self, label: int) -> RoiSpec:
        """The ROI with ``label``; raises KeyError when there is none."""
        for roi in self.rois:
            if roi.label == label:
                return roi
        raise KeyError(label)


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: ``location: message``."""
    lines = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(card)"
        lines.append(f"  {loc}: {item['msg']}")
    return "\n".join(lines)


def parse_card(text: str, source: str = "model.yaml") -> ModelCard:
    """Validate the YAML text of a card.

    Parameters
    ----------
    text
        Contents of ``model.yaml``.
    source
        Where it came from, for messages.

    Raises
    ------
    ModelPackageError
        When the YAML is unreadable or the card is invalid; lists every problem.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ModelPackageError(f"{source} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ModelPackageError(f"{source} must be a YAML mapping (name:, version:, rois: ...)")
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as err:
        raise ModelPackageError(
            f"{source} is not a valid model card; fix these fields:\n{format_validation_error(err)}"
        ) from err
