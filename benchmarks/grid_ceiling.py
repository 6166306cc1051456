"""The best Dice any model on a given grid can score: reference masks there and back.

Run::

    .venv/bin/python benchmarks/grid_ceiling.py ../shared/data/openkbp/train-pats \
        --cases 8 --spacing 4 4 2.5 --spacing 3 3 2.5 --spacing 2 2 2.5

For each case (the first ``--cases`` in the dataset's order,
``training.openkbp_dataset.list_cases``) and each organ mask, the mask is
resampled onto an LPS grid of the given spacing (``[x, y, z]`` mm) exactly as
training makes its labels (``resample_to_spacing``, linear, threshold 0.5),
then back onto the case's own grid (linear, threshold 0.5: how
the pipeline maps a model's soft output back), and compared with the original
mask by Dice. A model that was perfect on the coarse grid would score exactly
this; whatever a model scores below it is the model's, not the grid's. Prints
the median per organ and their mean.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def round_trip_dice(mask_path: Path, spacing_xyz_mm: tuple[float, float, float]) -> float:
    """Dice of the mask in ``mask_path`` with itself after the trip to ``spacing_xyz_mm``."""
    import SimpleITK as sitk

    from training.metrics import dice
    from training.openkbp_dataset import resample_to_spacing

    image = sitk.ReadImage(str(mask_path), sitk.sitkFloat32)
    reference = sitk.GetArrayFromImage(image) > 0.5
    coarse = resample_to_spacing(image, spacing_xyz_mm, sitk.sitkLinear, 0.0)
    coarse = sitk.Cast(sitk.BinaryThreshold(coarse, 0.5, 1e9, 1, 0), sitk.sitkFloat32)
    back = sitk.Resample(coarse, image, sitk.Transform(), sitk.sitkLinear, 0.0)
    return dice(sitk.GetArrayFromImage(back) >= 0.5, reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path, help="NIfTI dataset (one folder per case)")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument(
        "--spacing", type=float, nargs=3, action="append", metavar=("X", "Y", "Z"), required=True
    )
    args = parser.parse_args()
    from training.openkbp_dataset import list_cases

    cases = [args.dataset / case for case in list_cases(args.dataset)[: args.cases]]
    print(f"{len(cases)} cases of {args.dataset}: {', '.join(c.name for c in cases)}")
    for spacing in args.spacing:
        by_organ: dict[str, list[float]] = {}
        for case in cases:
            for mask in sorted(case.glob("*.nii.gz")):
                if mask.name != "ct.nii.gz":
                    name = mask.name.removesuffix(".nii.gz")
                    by_organ.setdefault(name, []).append(round_trip_dice(mask, tuple(spacing)))
        medians = {name: float(np.median(values)) for name, values in sorted(by_organ.items())}
        cells = "  ".join(f"{name} {value:.3f}" for name, value in medians.items())
        print(f"{' x '.join(f'{s:g}' for s in spacing)} mm: {cells}")
        print(f"  mean of the organ medians {np.mean(list(medians.values())):.3f}")


if __name__ == "__main__":
    main()
