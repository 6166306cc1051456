"""Time the feedback comparison of a reviewed structure set (it runs in the worker).

Usage::

    python benchmarks/feedback_benchmark.py [--slices 120] [--repeat 2]

Builds the writer benchmark's 10 realistic ROIs on a 512 x 512 x N CT
(0.977 mm pixels, 2.5 mm slices), writes them as contourd would
(``write_rtstruct``), makes a "reviewed" set (half the ROIs moved 3 mm in x,
one deleted, the rest untouched) and times, best of ``--repeat``:

- ``contourd compare``: ``compare_structure_sets`` for the whole set
  (rasterising both sides, Dice, surface Dice, HD95, volumes, added path
  length per ROI): what a reviewed set costs the worker;
- for one large edited ROI (Liver), ``contourd figures`` (the mask figures of
  :func:`training.metrics.compute_metrics`) against the named peer
  ``plastimatch dice --all`` on the same two masks written as MHA (Dice and
  Hausdorff figures; its file reading is included, ours starts from arrays).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from writer_benchmark import best_of, make_rois  # noqa: E402

from inference.phantom import write_ct_series  # noqa: E402
from inference.roi_mask import AlgorithmInfo  # noqa: E402
from inference.rtstruct_writer import write_rtstruct  # noqa: E402
from inference.volume import load_series  # noqa: E402
from training.metrics import compute_metrics  # noqa: E402
from training.rtstruct_reader import Contour, StructureSet, rasterise_roi, read_rtstruct  # noqa: E402
from training.structure_set_compare import compare_structure_sets, roi_mapper  # noqa: E402

SHIFT_MM = 3.0


def reviewed_copy(sent: StructureSet) -> StructureSet:
    """Every other ROI moved SHIFT_MM in x, the last one deleted."""
    out = copy.deepcopy(sent)
    out.rois = out.rois[:-1]
    for i, roi in enumerate(out.rois):
        if i % 2 == 1:
            roi.contours = [
                Contour(c.points_lps_mm + [SHIFT_MM, 0.0, 0.0], c.geometric_type, None)
                for c in roi.contours
            ]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    shape = (args.slices, 512, 512)
    affine = np.diag([0.977, 0.977, 2.5, 1.0])
    affine[:3, 3] = [-250.0, -250.0, -150.0]
    rois = make_rois(shape)
    with tempfile.TemporaryDirectory() as tmp:
        series = write_ct_series(
            Path(tmp) / "ct", np.full(shape, -1000, dtype=np.int16), affine, patient_position="HFS"
        )
        volume = load_series(series.paths)
        algorithm = AlgorithmInfo("bench-model", "1.0.0", "ab" * 32, "0.1.0")
        sent = read_rtstruct(
            write_rtstruct(series.headers, rois, algorithm, structure_set_label="bench")
        )
        approved = reviewed_copy(sent)
        mapper = roi_mapper([r.name for r in sent.rois])
        print(f"grid 512x512x{args.slices}, {len(sent.rois)} ROIs sent, 5 moved 3 mm, 1 deleted")

        result = compare_structure_sets(sent, approved, volume, mapper)
        t_compare = best_of(
            args.repeat, lambda: compare_structure_sets(sent, approved, volume, mapper)
        )
        print(f"contourd compare (whole set)   {t_compare:7.2f} s")
        for edit in result.rois:
            print(
                f"  {edit.roi:<11} {edit.classification:<9} Dice {edit.dice:.3f} "
                f"sDice {edit.surface_dice:.3f} APL {edit.added_path_length_mm:8.1f} mm"
            )

        liver_sent = next(r for r in sent.rois if r.name == "Liver")
        liver_approved = next(r for r in approved.rois if r.name == "Liver")
        a = rasterise_roi(liver_sent, volume)
        b = rasterise_roi(liver_approved, volume)
        spacing_zyx = tuple(reversed(volume.spacing_mm))
        t_ours = best_of(args.repeat, lambda: compute_metrics(a, b, spacing_zyx))
        ours = compute_metrics(a, b, spacing_zyx)
        print(
            f"contourd figures (Liver)       {t_ours:7.2f} s  Dice {ours.dice:.4f} "
            f"HD95 {ours.hd95_mm:.2f} mm"
        )
        binary = shutil.which("plastimatch")
        if binary is None:
            print("plastimatch dice --all           n/a  (apt-get install plastimatch)")
            return 0
        import SimpleITK as sitk

        paths = []
        for name, mask in (("sent", a), ("approved", b)):
            image = sitk.GetImageFromArray(mask.astype(np.uint8))
            image.SetSpacing(tuple(float(s) for s in volume.spacing_mm))
            image.SetOrigin(tuple(float(v) for v in volume.affine[:3, 3]))
            path = Path(tmp) / f"{name}.mha"
            sitk.WriteImage(image, str(path))
            paths.append(str(path))
        run = [binary, "dice", "--all", *paths]
        t_peer = best_of(args.repeat, lambda: subprocess.run(run, capture_output=True, check=True))
        out = subprocess.run(run, capture_output=True, text=True, check=True).stdout
        dice_line = next((ln.strip() for ln in out.splitlines() if "DICE" in ln), "?")
        hd95_line = next(
            (ln.strip() for ln in out.splitlines() if "0.95) Hausdorff distance (boundary)" in ln),
            "?",
        )
        print(f"plastimatch dice --all (Liver) {t_peer:7.2f} s  {dice_line}; {hd95_line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
