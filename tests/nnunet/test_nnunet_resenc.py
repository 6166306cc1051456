"""A residual-encoder nnU-Net (nnU-Net's ResEnc presets) imports and runs like a plain one.

The results folder is written here with a small ``ResidualEncoderUNet`` and
random weights (the network's construction is what is under test, not its
training). contourd's network, built from the imported card, must give the
same logits as the network nnU-Net's own trainer builds from the plans, and
contourd's ``exact`` mode the same label map as ``nnUNetPredictor``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import load_file

from inference.nnunet_network import split_folds
from inference.nnunet_runtime import NnunetPredictor
from model_store.card import parse_card
from model_store.network_layout import build_network
from model_store.nnunet_import import NnunetImportOptions, convert

nnunetv2 = pytest.importorskip("nnunetv2", reason="pip install -c constraints.txt -e '.[test]'")
torch = pytest.importorskip("torch")

PATCH = [16, 32, 32]
SPACING = [2.0, 1.0, 1.0]
ARCH_KWARGS: dict[str, Any] = {
    "n_stages": 4,
    "features_per_stage": [8, 16, 32, 32],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
    "n_blocks_per_stage": [1, 2, 2, 2],
    "n_conv_per_stage_decoder": [1, 1, 1],
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}
NETWORK = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


def _plans() -> dict[str, Any]:
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset903_ResEnc",
        "plans_name": "nnUNetResEncUNetMPlans",
        "original_median_spacing_after_transp": SPACING,
        "original_median_shape_after_transp": [30, 60, 60],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetResEncUNetMPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": PATCH,
                "median_image_size_in_voxels": [30, 60, 60],
                "spacing": SPACING,
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resampling,
                "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
                "architecture": {
                    "network_class_name": NETWORK,
                    "arch_kwargs": ARCH_KWARGS,
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "nnUNetPlannerResEncM",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 400.0, "mean": 60.0, "median": 50.0, "min": -200.0,
                "percentile_00_5": -150.0, "percentile_99_5": 300.0, "std": 90.0,
            }
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained-model folder with one fold of random (seeded) ResEnc weights."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    root = tmp_path_factory.mktemp("resenc") / "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres"
    (root / "fold_0").mkdir(parents=True)
    plans = _plans()
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "Liver": 1,
               "Spleen": 2}, "numTraining": 0, "file_ending": ".nii.gz"}  # fmt: skip
    (root / "plans.json").write_text(json.dumps(plans))
    (root / "dataset.json").write_text(json.dumps(dataset))
    manager = PlansManager(plans)
    torch.manual_seed(3)
    net = nnUNetTrainer.build_network_architecture(
        manager, manager.get_configuration("3d_fullres"), 1, 3, enable_deep_supervision=False
    )
    with torch.no_grad():  # decisive classes: random logits are near-ties everywhere
        for name, tensor in net.state_dict().items():
            if name.startswith("decoder.seg_layers."):
                tensor.mul_(50.0)
    checkpoint = {
        "network_weights": net.state_dict(),
        "trainer_name": "nnUNetTrainer",
        "init_args": {"configuration": "3d_fullres"},
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, root / "fold_0" / "checkpoint_final.pth")
    return root


def test_the_residual_encoder_network_built_from_the_card_gives_nnunets_logits(
    folder: Path, tmp_path: Path
) -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    convert(folder, tmp_path / "pkg", NnunetImportOptions(body_site="ABDOMEN"), tmp_path / "x")
    card = parse_card((tmp_path / "pkg" / "model.yaml").read_text())
    assert card.nnunet is not None and card.nnunet.network_class == NETWORK
    ours = build_network(card.nnunet, 3)
    (state,) = split_folds(load_file(str(tmp_path / "pkg" / "weights.safetensors")), [0])
    ours.load_state_dict(state, strict=True)
    manager = PlansManager(json.loads((folder / "plans.json").read_text()))
    theirs = nnUNetTrainer.build_network_architecture(
        manager, manager.get_configuration("3d_fullres"), 1, 3, enable_deep_supervision=False
    )
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=True)
    theirs.load_state_dict(checkpoint["network_weights"])
    assert type(ours) is type(theirs)
    x = torch.randn(1, 1, *PATCH, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=1e-5, atol=1e-5)


def test_exact_mode_draws_nnunet_predictors_label_map(folder: Path, tmp_path: Path) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    convert(folder, tmp_path / "pkg", NnunetImportOptions(body_site="ABDOMEN"), tmp_path / "x")
    card = parse_card((tmp_path / "pkg" / "model.yaml").read_text())
    assert card.nnunet is not None
    states = split_folds(load_file(str(tmp_path / "pkg" / "weights.safetensors")), [0])
    ours = NnunetPredictor(card.nnunet, 3, states, device="cpu")
    rng = np.random.default_rng(5)
    image = np.full((24, 50, 44), -1000.0, dtype=np.float32)
    image[3:21, 5:45, 4:40] = rng.normal(60, 120, size=(18, 40, 36))
    spacing = (2.5, 0.9, 0.9)
    labels = ours.segment(image, spacing, ours.run_settings("exact", mirror=False))

    plans = json.loads((folder / "plans.json").read_text())
    manager = PlansManager(plans)
    conf = manager.get_configuration("3d_fullres")
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=True)
    net = nnUNetTrainer.build_network_architecture(manager, conf, 1, 3, False)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False,
                                device=torch.device("cpu"), allow_tqdm=False)  # fmt: skip
    dataset = json.loads((folder / "dataset.json").read_text())
    predictor.manual_initialization(net, manager, conf, [checkpoint["network_weights"]], dataset,
                                    "nnUNetTrainer", (0, 1, 2))  # fmt: skip
    reference = predictor.predict_single_npy_array(image[None], {"spacing": list(spacing)})
    assert labels.shape == reference.shape
    # nnUNetPredictor accumulates the windows' logits in float16 on the CPU, contourd in
    # float32, so a voxel whose two best classes nearly tie may differ.
    print(f"voxels that differ: {int((labels != reference).sum())} of {labels.size}")
    assert float(np.mean(labels == reference)) >= 0.9995
    for label in (1, 2):
        ours_mask, theirs = labels == label, reference == label
        dice = 2 * int((ours_mask & theirs).sum()) / int(ours_mask.sum() + theirs.sum())
        assert dice >= 0.995, (label, dice)
