"""nnU-Net model on a CT: ``nnUNetPredictor`` (CPU) vs contourd ``exact`` and ``fast``.

Run (needs the test extra, which installs nnunetv2); the figures in
docs/benchmarks.md came from these two::

    # 512x512x200 CT, plans at 2.5 x 1.95 x 1.95 mm, mirroring off (about 25 min here)
    .venv/bin/python benchmarks/nnunet_benchmark.py --shape 200 512 512 \
        --spacing 2.5 0.98 0.98 --target-spacing 2.5 1.95 1.95
    # the same CT, a coarse model (plans 2.5 x 3.9 x 3.9 mm), nnU-Net's default mirroring
    .venv/bin/python benchmarks/nnunet_benchmark.py --shape 200 512 512 \
        --spacing 2.5 0.98 0.98 --target-spacing 2.5 3.9 3.9 --mirror

It writes an nnU-Net v2 results folder for a network of nnU-Net's default
3d_fullres size for a CT task (PlainConvUNet, 6 stages, 32..320 features,
patch 128^3 by default; untrained weights: timing does not need trained
ones) with a ``plans.json``, ``dataset.json`` (CT, 3 labels) and one fold's
``checkpoint_final.pth``, imports it with contourd's importer, and runs the
same synthetic CT (a body in air, ``--shape`` [z, y, x] voxels at
``--spacing`` mm) three ways, each in its own process so peak memory
(``ru_maxrss``) is that run's own:

- ``nnunet``: ``nnUNetPredictor.predict_single_npy_array`` (step 0.5, Gaussian,
  CPU; mirroring with ``--mirror``, nnU-Net's default);
- ``exact``: contourd's reproduction of it (mirroring as ``nnunet``);
- ``fast``: contourd's fast mode as it ships (no mirroring unless
  ``--fast-mirror``).

It prints seconds, peak resident memory, the number of network passes (each
window, each mirror), seconds per pass and per-label Dice of each label map
against nnU-Net's. Random weights leave many near-ties between classes, so
the Dice here says little about ``fast``; the agreement that counts is on a
trained model (``tests/nnunet``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LABELS = {"background": 0, "Liver": 1, "Kidney_L": 2, "Kidney_R": 3}


def make_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A body ellipse (soft tissue with noise) in air, HU ``[z, y, x]``."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    body = ((yy - ny / 2) / (0.35 * ny)) ** 2 + ((xx - nx / 2) / (0.42 * nx)) ** 2 <= 1
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[:, body] = 40.0
    image += rng.normal(0, 20, shape).astype(np.float32) * body[None]
    return image


def write_results_folder(root: Path, patch: list[int], spacing: list[float]) -> Path:
    """An nnU-Net v2 trained-model folder with random weights (one fold)."""
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    features = [32, 64, 128, 256, 320, 320]
    strides = [[1, 1, 1]] + [[2, 2, 2]] * 5
    arch_kwargs = {
        "n_stages": 6,
        "features_per_stage": features,
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 6,
        "strides": strides,
        "n_conv_per_stage": [2] * 6,
        "n_conv_per_stage_decoder": [2] * 5,
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    plans = {
        "dataset_name": "Dataset999_BenchCT",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": [200, 512, 512],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": patch,
                "median_image_size_in_voxels": [200, 512, 512],
                "spacing": spacing,
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {
                    "is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None
                },
                "resampling_fn_seg_kwargs": {
                    "is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None
                },
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None
                },
                "architecture": {
                    "network_class_name": (
                        "dynamic_network_architectures.architectures.unet.PlainConvUNet"
                    ),
                    "arch_kwargs": arch_kwargs,
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 3000.0, "mean": 100.0, "median": 80.0, "min": -1024.0,
                "percentile_00_5": -950.0, "percentile_99_5": 1500.0, "std": 200.0,
            }
        },
    }  # fmt: skip
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": 0,
        "file_ending": ".nii.gz",
    }
    folder = root / "Dataset999_BenchCT" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    kwargs = dict(arch_kwargs)
    kwargs.update(
        conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU
    )
    torch.manual_seed(0)
    net = PlainConvUNet(input_channels=1, num_classes=len(LABELS), **kwargs)
    checkpoint = {
        "network_weights": net.state_dict(),
        "trainer_name": "nnUNetTrainer",
        "init_args": {"configuration": "3d_fullres"},
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def count_forwards(net: Any) -> list[int]:
    """Wrap ``net.forward`` so each call adds one to the returned one-element counter."""
    calls = [0]
    forward = net.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return forward(*args, **kwargs)

    net.forward = counted
    return calls


def run_one(kind: str, work: Path, threads: int, mirror: bool, fast_mirror: bool = False) -> None:
    """One measured run in this process; writes ``<kind>.npy`` and ``<kind>.json``."""
    import torch

    torch.set_num_threads(threads)
    image = np.load(work / "ct.npy")
    spacing = json.loads((work / "spacing.json").read_text())
    folder = Path((work / "folder.txt").read_text())
    if kind == "nnunet":
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans = PlansManager(json.loads((folder / "plans.json").read_text()))
        dataset_json = json.loads((folder / "dataset.json").read_text())
        conf = plans.get_configuration("3d_fullres")
        ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
        net = nnUNetTrainer.build_network_architecture(
            plans, conf, 1, len(LABELS), enable_deep_supervision=False
        )
        net.load_state_dict(ckpt["network_weights"])
        calls = count_forwards(net)
        predictor = nnUNetPredictor(
            tile_step_size=0.5, use_mirroring=mirror, device=torch.device("cpu"), allow_tqdm=False
        )
        predictor.manual_initialization(
            net, plans, conf, [ckpt["network_weights"]], dataset_json, "nnUNetTrainer", (0, 1, 2)
        )
        t0 = time.perf_counter()
        labels = predictor.predict_single_npy_array(image[None], {"spacing": spacing})
        seconds = time.perf_counter() - t0
    else:
        from safetensors.torch import load_file

        from inference.nnunet_network import split_folds
        from inference.nnunet_runtime import NnunetPredictor
        from model_store.card import parse_card

        card = parse_card((work / "package" / "model.yaml").read_text())
        assert card.nnunet is not None
        states = split_folds(load_file(str(work / "package" / "weights.safetensors")), [0])
        predictor = NnunetPredictor(card.nnunet, len(card.rois) + 1, states, device="cpu")
        calls = count_forwards(predictor.net)
        # exact mirrors as nnUNetPredictor does here (--mirror); fast keeps its own
        # default (off) unless --fast-mirror asks for it.
        use_mirror = mirror if kind == "exact" else (True if fast_mirror else None)
        settings = predictor.run_settings(kind, mirror=use_mirror)
        t0 = time.perf_counter()
        labels = predictor.segment(image, tuple(spacing), settings)
        seconds = time.perf_counter() - t0
    np.save(work / f"{kind}.npy", np.asarray(labels, dtype=np.uint8))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record = {"seconds": seconds, "peak_mib": peak_mib, "forwards": calls[0]}
    (work / f"{kind}.json").write_text(json.dumps(record))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2 * int((a & b).sum()) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[200, 512, 512], help="z y x")
    parser.add_argument("--spacing", type=float, nargs=3, default=[2.5, 0.98, 0.98], help="mm")
    parser.add_argument("--target-spacing", type=float, nargs=3, default=None,
                        help="plans spacing, mm (default: --spacing)")  # fmt: skip
    parser.add_argument("--patch", type=int, nargs=3, default=[128, 128, 128])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mirror", action="store_true",
                        help="mirrored test-time augmentation in nnunet and exact (nnU-Net's "
                        "default: 8x the network passes); fast keeps its default")  # fmt: skip
    parser.add_argument("--fast-mirror", action="store_true",
                        help="mirrored test-time augmentation in fast too")  # fmt: skip
    parser.add_argument("--only", choices=["nnunet", "exact", "fast"], default=None)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep the CT, model and results here (default: a temporary "
        "folder); kinds already run there are reported, not rerun",
    )
    parser.add_argument(
        "--rerun",
        nargs="*",
        default=[],
        choices=["nnunet", "exact", "fast"],
        help="with --work-dir: run these kinds again",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["exact", "fast"],
        help="leave these kinds out (nnunet is the reference, always run)",
    )
    args = parser.parse_args()
    if args.only:
        run_one(args.only, args.work, args.threads, args.mirror, args.fast_mirror)
        return
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        compare(args, args.work_dir)
        return
    with tempfile.TemporaryDirectory(prefix="nnunet-bench-") as tmp:
        compare(args, Path(tmp))


def compare(args: argparse.Namespace, work: Path) -> None:
    """Write the CT and the model into ``work`` (unless there), run each kind, print the table.

    A kind whose ``<kind>.json`` is already in ``work`` and is not in ``--rerun`` is
    reported from that earlier run (said in the output).
    """
    from model_store.nnunet_import import NnunetImportOptions, convert

    if not (work / "package" / "model.yaml").is_file():
        np.save(work / "ct.npy", make_ct(tuple(args.shape)))
        (work / "spacing.json").write_text(json.dumps(args.spacing))
        folder = write_results_folder(work / "results", args.patch,
                                      args.target_spacing or args.spacing)  # fmt: skip
        (work / "folder.txt").write_text(str(folder))
        convert(folder, work / "package", NnunetImportOptions(body_site="ABDOMEN"), work / "x")
    print(f"CT {args.shape[::-1]} voxels (x y z) at {args.spacing[::-1]} mm; patch "
          f"{args.patch}; plans spacing {(args.target_spacing or args.spacing)[::-1]} mm; "
          f"{args.threads} torch threads; mirroring in nnunet and exact "
          f"{'on' if args.mirror else 'off'}, in fast "
          f"{'on' if args.fast_mirror else 'off'}")  # fmt: skip
    results: dict[str, Any] = {}
    for kind in ("nnunet", "exact", "fast"):
        if kind in args.skip:
            print(f"{kind}: not run (--skip)")
            continue
        if (work / f"{kind}.json").is_file() and kind not in args.rerun:
            print(f"{kind}: figures of the earlier run in {work}")
        else:
            cmd = [sys.executable, __file__, "--only", kind, "--work", str(work),
                   "--threads", str(args.threads)]  # fmt: skip
            cmd += ["--mirror"] if args.mirror else []
            cmd += ["--fast-mirror"] if args.fast_mirror else []
            subprocess.run(cmd, check=True)
        results[kind] = json.loads((work / f"{kind}.json").read_text())
    reference = np.load(work / "nnunet.npy")
    base = results["nnunet"]["seconds"]
    print(f"{'run':<8} {'seconds':>9} {'speed-up':>9} {'peak MiB':>9} {'passes':>7} "
          f"{'s/pass':>7}  Dice vs nnUNetPredictor")  # fmt: skip
    for kind, r in results.items():
        labels = np.load(work / f"{kind}.npy")
        agreement = ", ".join(
            f"{name} {dice(labels == v, reference == v):.4f}" for name, v in LABELS.items() if v
        )
        per_pass = r["seconds"] / max(r["forwards"], 1)
        print(
            f"{kind:<8} {r['seconds']:>9.1f} {base / r['seconds']:>8.2f}x "
            f"{r['peak_mib']:>9.0f} {r['forwards']:>7} {per_pass:>7.2f}  {agreement}"
        )


if __name__ == "__main__":
    main()
