"""Make a real nnU-Net v2 model with nnunetv2 itself (run as a script, test extra).

``python make_nnunet_model.py WORK --folds 0 1 --iterations 30 15 [--modality MR]``

Writes a synthetic CT dataset in nnU-Net's raw format under ``WORK/raw``
(``nnunet_cases.make_case``), runs nnU-Net's fingerprinting, planning and
preprocessing (3d_fullres), and trains each fold with nnU-Net's
``nnUNetTrainer_1epoch`` on the CPU, with fewer iterations per epoch than its
default 250 so the test stays within minutes. The environment variables
``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` must point
into ``WORK`` before nnunetv2 is imported, which is why this is a script.
Prints the trained-model folder on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nnunet_cases import (  # noqa: E402
    DATASET_ID,
    DATASET_NAME,
    LABELS,
    MR_DATASET_ID,
    MR_DATASET_NAME,
    TRAIN_SPACING_ZYX,
    hu_to_mr,
    make_case,
)


def write_raw(raw: Path, cases: int, modality: str = "CT") -> None:
    """``imagesTr``/``labelsTr`` NIfTIs and ``dataset.json`` of the synthetic dataset
    (``modality`` "MR": :func:`nnunet_cases.hu_to_mr` images, channel "MR")."""
    import SimpleITK as sitk

    base = raw / (MR_DATASET_NAME if modality == "MR" else DATASET_NAME)
    (base / "imagesTr").mkdir(parents=True, exist_ok=True)
    (base / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        image, labels = make_case(seed=i, spacing_zyx=TRAIN_SPACING_ZYX)
        if modality == "MR":
            image = hu_to_mr(image)
        for array, path in (
            (image, base / "imagesTr" / f"case_{i:03d}_0000.nii.gz"),
            (labels, base / "labelsTr" / f"case_{i:03d}.nii.gz"),
        ):
            img = sitk.GetImageFromArray(array)
            img.SetSpacing(tuple(reversed(TRAIN_SPACING_ZYX)))
            sitk.WriteImage(img, str(path))
    dataset = {
        "channel_names": {"0": modality},
        "labels": {"background": 0, **LABELS},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (base / "dataset.json").write_text(json.dumps(dataset, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--iterations",
        type=int,
        nargs="+",
        default=[30],
        help="training iterations of each fold in --folds order (the last value repeats)",
    )
    parser.add_argument("--modality", choices=["CT", "MR"], default="CT")
    parser.add_argument(
        "--seed", type=int, default=12345, help="seeds torch, numpy and random per fold"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    work = args.work.resolve()
    for key, sub in (
        ("nnUNet_raw", "raw"),
        ("nnUNet_preprocessed", "preprocessed"),
        ("nnUNet_results", "results"),
    ):
        (work / sub).mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(work / sub)
    os.environ["nnUNet_n_proc_DA"] = "1"  # noqa: SIM112 - nnU-Net's name; the planner wants > 0
    write_raw(work / "raw", args.cases, args.modality)
    dataset_id, dataset_name = (
        (MR_DATASET_ID, MR_DATASET_NAME) if args.modality == "MR" else (DATASET_ID, DATASET_NAME)
    )

    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs import (
        nnUNetTrainer_1epoch,
    )

    torch.set_num_threads(args.threads)
    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, verbose=False)
    plan_experiments([dataset_id])
    preprocess([dataset_id], configurations=["3d_fullres"], num_processes=[1], verbose=False)
    os.environ["nnUNet_n_proc_DA"] = "0"  # noqa: SIM112 - augment in this process
    folder = None
    for index, fold in enumerate(args.folds):
        # The trainer class directly: nnU-Net's search by name imports every trainer
        # module, and its Primus trainers import timm -> torchvision, whose PyPI wheel
        # does not load against the CPU build of torch pinned here.
        preprocessed = work / "preprocessed" / dataset_name
        plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
        plans["continue_training"] = False  # as nnU-Net's get_trainer_from_args sets it
        # Seeded: unseeded, the 30-iteration model sometimes learnt no sphere at
        # all (CI, 2026-12-03), and a test on it then has no reference to compare.
        random.seed(args.seed + fold)
        np.random.seed(args.seed + fold)
        torch.manual_seed(args.seed + fold)
        trainer = nnUNetTrainer_1epoch(
            plans=plans,
            configuration="3d_fullres",
            fold=fold,
            dataset_json=json.loads((preprocessed / "dataset.json").read_text()),
            device=torch.device("cpu"),
        )
        trainer.num_iterations_per_epoch = args.iterations[min(index, len(args.iterations) - 1)]
        trainer.num_val_iterations_per_epoch = 2
        trainer.run_training()
        folder = Path(trainer.output_folder).parent
    print(folder)


if __name__ == "__main__":
    main()
