"""MaskAgreement: a second run's masks scored against a first run's, by hand-worked answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contourd.errors import TrainingError
from training.mask_agreement import MaskAgreement
from training.metrics import dice


def _box(shape: tuple[int, int, int], z: slice, y: slice, x: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[z, y, x] = True
    return mask


def test_dice_by_hand() -> None:
    shape = (4, 10, 10)
    a = _box(shape, slice(0, 2), slice(0, 10), slice(0, 10))  # 200 voxels
    b = _box(shape, slice(1, 3), slice(0, 10), slice(0, 10))  # 200 voxels, 100 shared
    assert dice(a, b) == pytest.approx(2 * 100 / 400)
    empty = np.zeros(shape, dtype=bool)
    assert dice(empty, empty) == 1.0
    assert dice(a, empty) == 0.0


def test_second_run_scored_against_the_first_per_label_and_case() -> None:
    shape = (4, 10, 10)
    full = _box(shape, slice(0, 4), slice(0, 10), slice(0, 10))  # 400
    half = _box(shape, slice(0, 2), slice(0, 10), slice(0, 10))  # 200, inside full
    with MaskAgreement(labels=(1, 2, 3)) as agreement:
        agreement.keep("case-a", {1: full, 2: half})
        agreement.keep("case-b", {1: half})
        agreement.score("case-a", {1: half, 2: half, 3: half})
        agreement.score("case-b", {1: half})
        folder = agreement._folder
        assert folder is not None
        assert len(list(Path(folder.name).glob("*.npz"))) == 2
    # label 1: case a 2*200/600, case b identical
    assert agreement.dice[1] == pytest.approx([2 * 200 / 600, 1.0])
    # label 2: case a identical; case b empty in both runs -> 1
    assert agreement.dice[2] == pytest.approx([1.0, 1.0])
    # label 3: only the second run has it in case a -> 0; both empty in case b -> 1
    assert agreement.dice[3] == pytest.approx([0.0, 1.0])


def test_a_case_missing_from_the_first_run_is_an_error() -> None:
    with MaskAgreement() as agreement, pytest.raises(TrainingError, match="not in the first run"):
        agreement.score("new", {1: np.ones((2, 2, 2), dtype=bool)})


def test_keep_outside_the_with_block_is_an_error() -> None:
    with pytest.raises(TrainingError, match="with"):
        MaskAgreement().keep("a", {})
