"""Cases whose CT is blank (every voxel -1024 HU) are left out of training and evaluation.

OpenKBP as converted in ../shared/data has such files (30 of 200 training and 7
of 40 validation CTs); their organ masks would teach the network to draw
organs in air.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from contourd.errors import BlankImageError
from training.openkbp_dataset import is_blank_ct, load_case, load_dataset

SOURCES = [["Organ"]]


def _write_case(root: Path, case_id: str, *, blank: bool) -> None:
    folder = root / case_id
    folder.mkdir(parents=True)
    ct = np.full((16, 24, 24), -1024, dtype=np.int16)
    organ = np.zeros(ct.shape, dtype=np.uint8)
    organ[6:10, 8:14, 8:14] = 1
    if not blank:
        ct[2:14, 4:20, 4:20] = 40
    for name, array in (("ct", ct), ("Organ", organ)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((4.0, 4.0, 2.5))
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))


def test_blank_ct_is_left_out_of_a_nifti_dataset(tmp_path: Path) -> None:
    _write_case(tmp_path, "pt_1", blank=False)
    _write_case(tmp_path, "pt_2", blank=True)
    (tmp_path / "cases.json").write_text(json.dumps({"pt_1": {}, "pt_2": {}}))
    cases = load_dataset(tmp_path, SOURCES, (4.0, 4.0, 2.5))
    assert [c.case_id for c in cases] == ["pt_1"]
    assert cases[0].labels.any()


def test_loading_a_blank_case_says_what_is_wrong(tmp_path: Path) -> None:
    _write_case(tmp_path, "pt_9", blank=True)
    with pytest.raises(BlankImageError, match="pt_9: ct.nii.gz is blank"):
        load_case(tmp_path / "pt_9", SOURCES, (4.0, 4.0, 2.5))


def test_blank_means_no_voxel_above_minus_1000_hu() -> None:
    assert is_blank_ct(np.full((2, 2, 2), -1024))
    assert not is_blank_ct(np.array([[[-1024, -999]]]))
