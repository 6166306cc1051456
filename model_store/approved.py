"""A model version ready to run: card, files, recorded hashes and the clinic's ROI overrides.

Obtained from :meth:`model_store.registry.ModelRegistry.resolve_approved`, which
has already checked the hashes once; :meth:`ApprovedModel.load_state_dict`
checks them again on the very bytes it loads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from contourd.errors import ModelIntegrityError
from model_store.card import ModelCard, RoiSpec
from model_store.package import sha256_file

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RoiOverride:
    """A clinic's change to one ROI of one model version (stored in ``roi_overrides``).

    ``None`` fields keep the card's value.
    """

    label: int
    name: str | None = None
    color: tuple[int, int, int] | None = None
    interpreted_type: str | None = None
    updated_by: str = ""
    updated_at: str = ""


def apply_overrides(rois: list[RoiSpec], overrides: Mapping[int, RoiOverride]) -> list[RoiSpec]:
    """The card's ROIs with each override's non-``None`` fields applied, in label order."""
    result = []
    for roi in sorted(rois, key=lambda r: r.label):
        override = overrides.get(roi.label)
        if override is None:
            result.append(roi)
            continue
        changes: dict[str, object] = {}
        if override.name is not None:
            changes["name"] = override.name
        if override.color is not None:
            changes["color"] = tuple(override.color)
        if override.interpreted_type is not None:
            changes["interpreted_type"] = override.interpreted_type
        result.append(RoiSpec.model_validate({**roi.model_dump(), **changes}))
    return result


@dataclass(frozen=True)
class ApprovedModel:
    """One model version resolved for running.

    Attributes
    ----------
    name, version
        Identify the model (written into the output's algorithm description).
    status
        ``"approved"`` from :meth:`~ModelRegistry.resolve_approved`; other
        statuses only from ``resolve(..., require_approved=False)`` (evaluation);
        outputs of a model that is not approved must say so.
    card
        The model card as imported (never edited).
    package_dir
        The stored package folder under ``<data_dir>/models/<name>/<version>/``.
    weights_path
        ``package_dir / "weights.safetensors"``; ``None`` for a classical model.
    weights_sha256
        sha256 recorded at approval (import for unapproved versions); ``None``
        for a classical model, which has no weights.
    card_sha256
        sha256 of ``model.yaml`` recorded at the same time; checked for every
        model type (for a classical model it is the only hash there is).
    approved_by, approved_at
        Who approved it and when (ISO 8601 UTC); ``None`` when not approved.
    overrides
        The clinic's ROI overrides by label.
    """

    name: str
    version: str
    status: str
    card: ModelCard
    package_dir: Path
    weights_path: Path | None
    weights_sha256: str | None
    card_sha256: str
    approved_by: str | None = None
    approved_at: str | None = None
    overrides: Mapping[int, RoiOverride] = field(default_factory=dict)

    @property
    def is_approved(self) -> bool:
        """True for a version approved for clinical routing."""
        return self.status == "approved"

    @property
    def display_name(self) -> str:
        """``"name version"``, for labels and logs."""
        return f"{self.name} {self.version}"

    def effective_rois(self) -> list[RoiSpec]:
        """The card's ROIs with the clinic's name, colour and type overrides applied.

        This is what the RTSTRUCT/SEG writers use for ROI Name, ROI Display
        Color and RT ROI Interpreted Type; ``label`` is unchanged.
        """
        return apply_overrides(self.card.rois, self.overrides)

    def _mismatch(self, what: str, path: Path, found: str, recorded: str) -> ModelIntegrityError:
        when = (
            f"when {self.approved_by} approved it at {self.approved_at}"
            if self.approved_by
            else "at import"
        )
        return ModelIntegrityError(
            f"model {self.display_name}: {what} {path} has sha256 {found[:16]}..., but "
            f"{recorded[:16]}... was recorded {when}; the file changed since, so contourd "
            f"refuses to run it. Restore the original file, or import the changed package as "
            f"a new version and approve that (`contourd models import`, `models approve`)"
        )

    def verify_weights(self) -> None:
        """Check the card and weights on disk against the recorded sha256.

        A classical model has no weights file, so only its card hash is checked.

        Raises
        ------
        ModelIntegrityError
            When a file is missing or its hash differs, naming the file and the
            recorded approval.
        """
        card_path = self.package_dir / "model.yaml"
        if not card_path.is_file():
            raise ModelIntegrityError(
                f"model {self.display_name}: {card_path} is missing; the stored package was "
                "altered. Re-import the package"
            )
        found = sha256_file(card_path)
        if found != self.card_sha256:
            raise self._mismatch("card", card_path, found, self.card_sha256)
        if self.weights_sha256 is None:
            return
        if self.weights_path is None or not self.weights_path.is_file():
            raise ModelIntegrityError(
                f"model {self.display_name}: weights file {self.weights_path} is missing; "
                "re-import the package"
            )
        found = sha256_file(self.weights_path)
        if found != self.weights_sha256:
            raise self._mismatch("weights", self.weights_path, found, self.weights_sha256)

    def load_state_dict(self, device: str = "cpu") -> dict[str, torch.Tensor]:
        """Load the weights with safetensors (never pickle) after checking their hash.

        The hash is computed on the same bytes that are deserialised, so a file
        swapped after :meth:`verify_weights` cannot slip through.

        Parameters
        ----------
        device
            torch device to put the tensors on.

        Raises
        ------
        ModelIntegrityError
            On a hash mismatch or a missing file.
        ValueError
            For a classical model, which has no weights.
        """
        if self.weights_path is None or self.weights_sha256 is None:
            raise ValueError(
                f"model {self.display_name} is a classical model ({self.card.algorithm}); "
                "it has no weights to load"
            )
        try:
            data = self.weights_path.read_bytes()
        except OSError as err:
            raise ModelIntegrityError(
                f"model {self.display_name}: cannot read weights {self.weights_path}: {err}"
            ) from err
        found = hashlib.sha256(data).hexdigest()
        if found != self.weights_sha256:
            raise self._mismatch("weights", self.weights_path, found, self.weights_sha256)
        from safetensors.torch import load

        tensors = load(data)
        if device != "cpu":
            tensors = {k: v.to(device) for k, v in tensors.items()}
        return tensors
