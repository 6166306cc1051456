"""nnU-Net back-resampling: class-by-class argmax, and fast mode's torch path against the spline
path (``resample_to_shape``, which ``tests/nnunet`` checks against nnunetv2 itself)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.nnunet_resampling import (
    argmax_of_resampled,
    linear_nearest_axis,
    resample_linear_torch,
    resample_to_shape,
)
from model_store.nnunet_card import NnunetResampling

PLAIN = ((2.0, 1.0, 1.0), (2.5, 1.2, 1.1))  # spacing, target: plain 3D resize
THICK = ((2.0, 1.0, 1.0), (4.0, 1.0, 1.0))  # target 4x coarser on axis 0: resampled on its own
FIRST_ORDER = NnunetResampling(order=1, order_z=0)


def _logits() -> np.ndarray:
    logits = np.random.default_rng(2).normal(size=(4, 9, 20, 18)).astype(np.float32)
    logits[2, 3:6, 5:12, 4:9] += 3.0  # a confident block
    logits[3] = logits[1]  # exact ties: the lower class wins, as np.argmax decides
    return logits


@pytest.mark.parametrize(("spacing", "target"), [PLAIN, THICK], ids=["plain", "thick"])
@pytest.mark.parametrize("linear", [False, True], ids=["spline", "torch"])
def test_argmax_of_resampled_matches_argmax_of_all_classes(
    spacing: tuple[float, ...], target: tuple[float, ...], linear: bool
) -> None:
    logits = _logits()
    shape = (13, 27, 23)
    if linear:
        nearest = linear_nearest_axis(FIRST_ORDER, spacing, target)
        expected = np.argmax(resample_linear_torch(logits, shape, nearest), axis=0)
    else:
        expected = np.argmax(resample_to_shape(logits, shape, spacing, target, FIRST_ORDER), 0)
    labels = argmax_of_resampled(logits, shape, spacing, target, FIRST_ORDER, linear=linear)
    assert labels.dtype == np.uint8 and labels.shape == shape
    np.testing.assert_array_equal(labels, expected)
    assert 3 not in labels and {0, 1, 2} <= set(np.unique(labels).tolist())


@pytest.mark.parametrize(
    ("spacing", "target", "shape", "nearest"),
    [(*PLAIN, (11, 29, 22), None), (*THICK, (4, 27, 23), 0), (*THICK, (17, 20, 18), 0)],
    ids=["plain", "thick-down", "thick-up"],
)
def test_torch_linear_resampling_matches_nnunets_first_order_spline(
    spacing: tuple[float, ...], target: tuple[float, ...], shape: tuple[int, ...], nearest: int
) -> None:
    """Fast mode's logits resampling samples where nnU-Net's order-1 path does, the
    thick-slice axis nearest-neighbour (order_z 0), so the two differ by rounding only."""
    assert linear_nearest_axis(FIRST_ORDER, spacing, target) == nearest
    logits = _logits()
    ours = resample_linear_torch(logits, shape, nearest)
    theirs = resample_to_shape(logits, shape, spacing, target, FIRST_ORDER)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_order_z_above_zero_keeps_every_axis_linear() -> None:
    assert linear_nearest_axis(NnunetResampling(order=1, order_z=1), *THICK) is None
    assert linear_nearest_axis(NnunetResampling(order=1, order_z=0, force_separate_z=False),
                               *THICK) is None  # fmt: skip


def test_same_shape_is_a_plain_argmax() -> None:
    logits = np.random.default_rng(3).normal(size=(3, 4, 5, 6)).astype(np.float32)
    labels = argmax_of_resampled(logits, (4, 5, 6), (1, 1, 1), (1, 1, 1), NnunetResampling())
    np.testing.assert_array_equal(labels, np.argmax(logits, axis=0))
