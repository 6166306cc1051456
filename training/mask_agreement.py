"""Agreement between two runs of a model on the same cases (e.g. nnU-Net ``exact`` vs ``fast``).

The first run's masks are kept on disk (compressed ``.npz`` per case in a
temporary folder, so a dataset of 512x512x200 CTs does not sit in memory);
the second run's masks are scored against them as they come. Dice of two
empty masks is 1 (both runs agree there is nothing).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np

from contourd.errors import TrainingError
from training.metrics import dice


@dataclass
class MaskAgreement:
    """Keep a first run's masks, then score a second run's against them, per label.

    Use as a context manager (the temporary folder goes at exit); pass
    :meth:`keep` as the first run's ``on_prediction`` and :meth:`score` as the
    second's (:func:`training.evaluate.evaluate_model`).

    Attributes
    ----------
    labels
        Labels scored in every case even where both runs leave them empty
        (the card's labels); others are scored where either run has them.
    dice
        Label -> Dice of the second run's mask against the first's, one per
        case, in case order.
    """

    labels: tuple[int, ...] = ()
    dice: dict[int, list[float]] = field(default_factory=dict)
    _folder: tempfile.TemporaryDirectory[str] | None = None
    _files: dict[str, Path] = field(default_factory=dict)

    def __enter__(self) -> MaskAgreement:
        self._folder = tempfile.TemporaryDirectory(prefix="contourd-agreement-")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def keep(self, case_id: str, masks: dict[int, np.ndarray]) -> None:
        """Store the first run's masks of one case (label -> boolean mask)."""
        if self._folder is None:
            raise TrainingError("MaskAgreement.keep outside its 'with' block; open it first")
        path = Path(self._folder.name) / f"case{len(self._files)}.npz"
        arrays = {str(label): mask for label, mask in masks.items()}
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy stubs: kwds
        self._files[case_id] = path

    def score(self, case_id: str, masks: dict[int, np.ndarray]) -> None:
        """Score the second run's masks of one case against the first run's."""
        path = self._files.get(case_id)
        if path is None:
            raise TrainingError(
                f"case {case_id!r} was not in the first run; both runs must see the same cases"
            )
        with np.load(path) as first:
            kept = {int(label): first[label] for label in first.files}
        shapes = [m.shape for m in (*kept.values(), *masks.values())]
        if not shapes:
            for label in self.labels:
                self.dice.setdefault(label, []).append(1.0)
            return
        shape = shapes[0]
        for label in sorted(set(self.labels) | set(kept) | set(masks)):
            a = kept.get(label, np.zeros(shape, dtype=bool))
            b = masks.get(label, np.zeros(shape, dtype=bool))
            self.dice.setdefault(label, []).append(dice(a, b))
