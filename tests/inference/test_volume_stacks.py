"""Mixed series: stacks are split and the primary axial stack is contoured; error
messages show the values that are wrong (outlier steps, the slice without pixels)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from inference_helpers import shared_data, write_ct_series
from peer_tools import make_add_images

from contourd.errors import SeriesGeometryError
from inference.volume import load_series

TILTED = Path("dicom") / "dicom2nifti-testdata" / "tests" / "data" / "failing" / "gantrytilting"


def _tilted_copy(tmp_path: Path) -> list[Path]:
    """The four real Siemens gantry-tilted CT slices (14 degrees), copied."""
    folder = shared_data() / TILTED / "001"
    out = []
    for path in sorted(p for p in folder.iterdir() if p.suffix == ".dcm"):
        target = tmp_path / path.name
        target.write_bytes(path.read_bytes())
        out.append(target)
    return out


@pytest.mark.shared_data
def test_tilted_series_with_add_images_contours_the_primary_stack_and_names_the_rest(
    tmp_path: Path,
) -> None:
    primary = _tilted_copy(tmp_path)
    # The vendor's ADD images under the same Series Instance UID, between the slices.
    added = make_add_images(primary[:2], tmp_path / "add")
    volume = load_series(primary + added)
    assert volume.shape == (4, 512, 512)
    assert {h.SOPInstanceUID for h in volume.headers} == {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in primary
    }
    assert volume.tilt_deg == pytest.approx(14.0, abs=0.05)
    [note] = [n for n in volume.notes if "stacks" in n]
    assert note.startswith(
        "the series holds 2 stacks; contoured the primary axial stack of 4 image(s) "
        "(ImageType ORIGINAL\\PRIMARY\\AXIAL\\CT_SOM5 SEQ, axial orientation"
    ), note
    assert note.endswith("set aside 2 image(s) with ImageType ORIGINAL\\PRIMARY\\AXIAL\\ADD"), note


@pytest.mark.shared_data
def test_a_slice_without_pixel_data_is_named_not_called_missing(tmp_path: Path) -> None:
    paths = _tilted_copy(tmp_path)
    ds = pydicom.dcmread(paths[2])
    del ds.PixelData
    ds.save_as(paths[2])
    with pytest.raises(SeriesGeometryError) as info:
        load_series(paths)
    message = str(info.value)
    assert "missing slices" not in message
    assert (
        f"1 slice(s) have a header but no Pixel Data (7FE0,0010): {paths[2].name} "
        "(instance 3, position [-106.79, -256.62, -51.95] mm); the image itself never "
        "arrived; resend those images (or the series) from the scanner"
    ) in message


def test_uneven_spacing_lists_the_outlier_steps_even_late_in_the_stack(tmp_path: Path) -> None:
    positions = [4.0 * k for k in range(15)] + [58.5, 62.5]
    written = write_ct_series(tmp_path, shape_zyx=(len(positions), 16, 16), positions_mm=positions)
    with pytest.raises(SeriesGeometryError) as info:
        load_series(written.paths)
    message = str(info.value)
    assert (
        "uneven slice spacing: 1 of 16 steps differ from the median 4.00 mm by more than "
        "0.20 mm: 2.50 mm between 56.00 and 58.50 mm"
    ) in message
    assert "4.00, 4.00" not in message  # the normal steps are not listed as the problem
