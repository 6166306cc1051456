"""The ``nnunet`` section of a model card: an imported nnU-Net v2 model.

Written by :mod:`model_store.nnunet_import` from the model's ``plans.json``,
``dataset.json`` and checkpoints; read by :mod:`inference.nnunet_runtime`.

Axis conventions
----------------
nnU-Net works on the image array as SimpleITK reads it, ``[z, y, x]``
(slice, row, column), after ``transpose_forward``. ``spacing_mm`` and
``patch_size`` are in that (transposed) array order, as in ``plans.json``.
``orientation`` is the SimpleITK ``DICOMOrient`` code the series is brought to
before nnU-Net's steps run: ``"LPS"`` (the default) is what SimpleITK gives
for an axial DICOM series or a NIfTI written from one without reorientation,
``"RAS"`` suits models trained on NIfTI reoriented to RAS (TotalSegmentator).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Network classes an nnU-Net card may name (module prefix), never arbitrary code.
NETWORK_MODULE_PREFIX = "dynamic_network_architectures.architectures."
#: Modules the importable network keyword arguments (conv_op, norm_op...) may come from.
KWARG_MODULE_PREFIX = "torch.nn."
#: nnU-Net's ANISO_THRESHOLD: a spacing ratio above this resamples z separately.
ANISOTROPY_THRESHOLD = 3.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NnunetResampling(_Strict):
    """nnU-Net's ``resample_data_or_seg_to_shape`` settings.

    ``order`` is the spline order in plane (or in 3D), ``order_z`` along the
    through-plane axis when that axis is resampled separately (spacing ratio
    above ``anisotropy_threshold``, or ``force_separate_z``).
    """

    order: int = Field(default=3, ge=0, le=5)
    order_z: int = Field(default=0, ge=0, le=5)
    force_separate_z: bool | None = None
    anisotropy_threshold: float = Field(default=ANISOTROPY_THRESHOLD, gt=1)


class NnunetNormalization(_Strict):
    """nnU-Net's intensity normalisation of the (single) input channel.

    ``CTNormalization``: clip to ``[percentile_00_5, percentile_99_5]`` of the
    training foreground, subtract ``mean``, divide by ``std`` (HU).
    ``ZScoreNormalization``: the image's own mean and standard deviation
    (inside the nonzero region when ``use_mask_for_norm``), as for MR.
    """

    scheme: Literal["CTNormalization", "ZScoreNormalization"]
    use_mask_for_norm: bool = False
    mean: float | None = None
    std: float | None = None
    percentile_00_5: float | None = None
    percentile_99_5: float | None = None


class NnunetFastSettings(_Strict):
    """What ``fast`` mode changes against ``exact`` (the network and its weights are the same).

    Parameters
    ----------
    tile_step_size
        Sliding-window step as a fraction of the patch (nnU-Net: 0.5); 1.0
        means windows touch without overlap.
    mirror
        Run the mirrored test-time augmentation (nnU-Net's default: on).
    crop_to_patient
        Run the network only inside the box of voxels above the image's
        lowest value (for CT: the patient and the couch, not the air), grown
        by ``crop_margin_voxels``; the rest is background.
    crop_margin_voxels
        Margin of that box, in network-grid voxels.
    resampling_order
        3 (default): the input is resampled with nnU-Net's spline, as in
        training; 1: linear with torch on all threads, faster on large CTs
        but the network then sees slightly smoother images (on the test model
        the Dice agreement with ``exact`` fell from 0.997 to 0.97). The
        logits are always resampled back linearly with torch in ``fast``
        (a thick-slice axis nearest-neighbour, as nnU-Net's ``order_z`` 0).
    """

    tile_step_size: float = Field(default=0.75, gt=0, le=1)
    mirror: bool = False
    crop_to_patient: bool = True
    crop_margin_voxels: int = Field(default=8, ge=0)
    resampling_order: Literal[1, 3] = 3


class NnunetSettings(_Strict):
    """An nnU-Net v2 model: where it came from and how nnU-Net runs it.

    Parameters
    ----------
    source
        ``<Trainer>__<Plans>__<configuration>`` folder name it was imported from.
    dataset_name
        nnU-Net dataset name (``DatasetNNN_Name``).
    trainer, plans_name, configuration
        The three parts of ``source``.
    folds
        Folds in the weights file (``fold_<k>.`` prefixes); logits are averaged.
    orientation
        SimpleITK ``DICOMOrient`` code of the arrays nnU-Net saw (module docstring).
    transpose_forward, transpose_backward
        nnU-Net's axis transposition (``plans.json``).
    spacing_mm
        Target spacing in transposed array order, mm.
    patch_size
        Sliding-window patch in transposed array order, voxels.
    normalization
        The input channel's normalisation.
    resampling_data, resampling_probabilities
        Resampling of the input to ``spacing_mm`` and of the logits back.
    network_class
        Dotted name of a ``dynamic_network_architectures`` class.
    network_kwargs
        Its keyword arguments from ``plans.json`` (``arch_kwargs``).
    network_kwargs_requires_import
        Which of those are dotted ``torch.nn`` names to import.
    num_input_channels
        Always 1 (multi-channel models are refused at import).
    mirror_axes
        Axes (0-2, transposed array order) mirrored for test-time augmentation.
    tile_step_size
        Sliding-window step of ``exact`` mode (nnU-Net: 0.5).
    mode
        ``"exact"`` reproduces ``nnUNetPredictor``; ``"fast"`` applies
        :class:`NnunetFastSettings`. A routing rule may override it.
    fast
        The ``fast`` mode settings.
    """

    source: str
    dataset_name: str
    trainer: str
    plans_name: str
    configuration: str
    folds: list[int | Literal["all"]] = Field(min_length=1)
    orientation: str = "LPS"
    transpose_forward: tuple[int, int, int] = (0, 1, 2)
    transpose_backward: tuple[int, int, int] = (0, 1, 2)
    spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    normalization: NnunetNormalization
    resampling_data: NnunetResampling = Field(default_factory=NnunetResampling)
    resampling_probabilities: NnunetResampling = Field(
        default_factory=lambda: NnunetResampling(order=1)
    )
    network_class: str
    network_kwargs: dict[str, Any]
    network_kwargs_requires_import: list[str] = Field(default_factory=list)
    num_input_channels: Literal[1] = 1
    mirror_axes: list[int] = Field(default_factory=list)
    tile_step_size: float = Field(default=0.5, gt=0, le=1)
    mode: Literal["exact", "fast"] = "exact"
    fast: NnunetFastSettings = Field(default_factory=NnunetFastSettings)

    @field_validator("network_class")
    @classmethod
    def _allowed_class(cls, value: str) -> str:
        if not value.startswith(NETWORK_MODULE_PREFIX):
            raise ValueError(
                f"network_class {value!r} is not a dynamic_network_architectures class "
                f"({NETWORK_MODULE_PREFIX}...); contourd builds no other network code"
            )
        return value

    @field_validator("transpose_forward", "transpose_backward")
    @classmethod
    def _permutation(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if sorted(value) != [0, 1, 2]:
            raise ValueError(f"transpose {list(value)} is not a permutation of [0, 1, 2]")
        return value

    @field_validator("mirror_axes")
    @classmethod
    def _axes(cls, value: list[int]) -> list[int]:
        if any(a not in (0, 1, 2) for a in value) or len(set(value)) != len(value):
            raise ValueError(f"mirror_axes {value} must be distinct axes among 0, 1, 2")
        return value

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, value: str) -> str:
        code = value.upper()
        axes = {"L": "x", "R": "x", "P": "y", "A": "y", "S": "z", "I": "z"}
        if len(code) != 3 or any(c not in axes for c in code) or len({axes[c] for c in code}) != 3:
            raise ValueError(
                f"orientation {value!r} must be a 3-letter code like LPS or RAS (one of L/R, "
                "P/A, S/I each)"
            )
        return code

    def check_kwargs(self) -> None:
        """Refuse importable keyword arguments outside ``torch.nn``.

        Raises
        ------
        ValueError
            Naming the argument and its value.
        """
        for key in self.network_kwargs_requires_import:
            value = self.network_kwargs.get(key)
            if value is not None and not str(value).startswith(KWARG_MODULE_PREFIX):
                raise ValueError(
                    f"network_kwargs.{key} = {value!r} is not a {KWARG_MODULE_PREFIX} name; "
                    "contourd imports nothing else"
                )

    def describe(self, mode: str | None = None) -> str:
        """One line for people: how the network is run (``mode`` overrides the card's)."""
        mode = mode or self.mode
        folds = ", ".join(str(f) for f in self.folds)
        if mode == "exact":
            mirror = f"mirroring axes {self.mirror_axes}" if self.mirror_axes else "no mirroring"
            return (
                f"nnU-Net exact: folds {folds}, step {self.tile_step_size}, {mirror}, "
                f"spline order {self.resampling_data.order}"
            )
        fast = self.fast
        return (
            f"nnU-Net fast: folds {folds}, step {fast.tile_step_size}, "
            f"{'mirroring' if fast.mirror and self.mirror_axes else 'no mirroring'}, "
            f"{'cropped to the patient' if fast.crop_to_patient else 'whole grid'}, "
            f"input {'spline' if fast.resampling_order == 3 else 'linear'}, logits linear"
        )
