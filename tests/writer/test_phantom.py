"""The phantom puts the same anatomy at the same patient coordinates in every position."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pydicom
import pytest

from inference.phantom import PhantomSeries


def centroid_lps(series: PhantomSeries, name: str) -> np.ndarray:
    k, r, c = np.nonzero(series.masks[name])
    voxels = np.stack([c, r, k, np.ones_like(k)]).astype(float)
    return (series.affine @ voxels)[:3].mean(axis=1)


def test_anatomy_is_fixed_in_patient_space_whatever_the_position(
    phantom_factory: Callable[..., PhantomSeries],
) -> None:
    series = {p: phantom_factory(p) for p in ("HFS", "FFS", "HFP", "FFP")}
    for name in ("BODY", "Kidneys", "Ring", "Stomach"):
        reference = centroid_lps(series["HFS"], name)
        for position, s in series.items():
            assert np.allclose(centroid_lps(s, name), reference, atol=1.6), (name, position)
    hfs = series["HFS"]
    # posterior is +y in LPS: kidneys lie posterior to the body's centre
    assert centroid_lps(hfs, "Kidneys")[1] > centroid_lps(hfs, "BODY")[1] + 10


@pytest.mark.parametrize("reverse", [False, True])
def test_files_on_disk_match_the_returned_order_and_headers(
    reverse: bool, phantom_factory: Callable[..., PhantomSeries]
) -> None:
    series = phantom_factory("FFS", reverse_file_order=reverse)
    normal = np.cross(
        np.array(series.headers[0].ImageOrientationPatient[:3], dtype=float),
        np.array(series.headers[0].ImageOrientationPatient[3:], dtype=float),
    )
    on_disk = [pydicom.dcmread(p) for p in series.paths]
    along = [float(np.array(d.ImagePositionPatient, dtype=float) @ normal) for d in on_disk]
    assert along == sorted(along)
    numbers = [int(d.InstanceNumber) for d in on_disk]
    assert numbers == (sorted(numbers, reverse=True) if reverse else sorted(numbers))
    hu = on_disk[3].pixel_array.astype(float) * float(on_disk[3].RescaleSlope) + float(
        on_disk[3].RescaleIntercept
    )
    assert np.array_equal(hu, series.volume_hu[3])
    assert on_disk[0].PatientPosition == "FFS"
