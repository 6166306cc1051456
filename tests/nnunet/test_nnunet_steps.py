"""contourd's nnU-Net steps against nnunetv2's own functions (test extra), step by step."""

from __future__ import annotations

import numpy as np
import pytest

from inference.nnunet_resampling import new_shape_for, resample_to_shape
from inference.nnunet_runtime import nnunet_gaussian, normalise_nnunet, window_starts
from model_store.nnunet_card import NnunetNormalization, NnunetResampling

pytest.importorskip("nnunetv2", reason="pip install -c constraints.txt -e '.[test]'")


@pytest.mark.parametrize(
    ("spacing", "target"),
    [
        ((3.5, 1.0, 1.0), (2.0, 1.0, 1.0)),  # thick slices: z resampled on its own
        ((2.5, 0.9, 0.9), (2.0, 1.0, 1.0)),  # plain 3D resize
        ((2.0, 1.0, 1.0), (3.5, 1.0, 1.0)),  # anisotropic target
    ],
)
@pytest.mark.parametrize("order", [3, 1])
def test_resampling_matches_nnunet(spacing: tuple, target: tuple, order: int) -> None:
    from nnunetv2.preprocessing.resampling.default_resampling import (
        compute_new_shape,
        resample_data_or_seg_to_shape,
    )

    data = np.random.default_rng(0).normal(size=(2, 11, 30, 27)).astype(np.float32)
    shape = compute_new_shape(data.shape[1:], spacing, target)
    assert tuple(shape) == new_shape_for(data.shape[1:], spacing, target)
    theirs = resample_data_or_seg_to_shape(
        data, shape, spacing, target, is_seg=False, order=order, order_z=0, force_separate_z=None
    )
    ours = resample_to_shape(data, shape, spacing, target, NnunetResampling(order=order))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_gaussian_and_window_starts_match_nnunet() -> None:
    import torch
    from nnunetv2.inference.sliding_window_prediction import (
        compute_gaussian,
        compute_steps_for_sliding_window,
    )

    theirs = compute_gaussian((20, 32, 28), 1 / 8, 10, dtype=torch.float32, device="cpu").numpy()
    np.testing.assert_allclose(nnunet_gaussian((20, 32, 28)), theirs / theirs.max(), atol=1e-6)
    for size, patch, step in [(110, 64, 0.5), (64, 64, 0.5), (77, 32, 0.5), (77, 32, 0.75)]:
        expected = compute_steps_for_sliding_window((size,), (patch,), step)[0]
        assert window_starts(size, patch, step) == expected


@pytest.mark.parametrize("scheme", ["CTNormalization", "ZScoreNormalization"])
def test_normalisation_matches_nnunet(scheme: str) -> None:
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import (
        CTNormalization,
        ZScoreNormalization,
    )

    image = np.random.default_rng(1).normal(0, 300, size=(8, 16, 16)).astype(np.float32)
    props = {"mean": 40.0, "std": 120.0, "percentile_00_5": -500.0, "percentile_99_5": 600.0}
    cls = CTNormalization if scheme == "CTNormalization" else ZScoreNormalization
    theirs = cls(use_mask_for_norm=False, intensityproperties=props).run(image.copy())
    norm = NnunetNormalization(scheme=scheme, **props)  # type: ignore[arg-type]
    ours = normalise_nnunet(image.copy(), np.ones(image.shape, dtype=bool), norm)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
