"""The weights layout model_store derives from a card is the state dict the network really has."""

from __future__ import annotations

import pytest
import torch

from contourd.errors import ModelPackageError
from inference.nnunet_network import split_folds
from inference.unet import UNet3D
from model_store.card import Architecture
from model_store.network_layout import (
    build_network,
    fold_prefix,
    nnunet_tensor_shapes,
    unet_tensor_shapes,
)
from model_store.nnunet_card import NnunetNormalization, NnunetSettings


@pytest.mark.parametrize(
    "fields",
    [
        {"num_classes": 2, "levels": 1},
        {"num_classes": 3, "base_channels": 4, "levels": 2, "max_channels": 8},
        {"num_classes": 8, "base_channels": 16, "levels": 4, "max_channels": 64},
        {"in_channels": 2, "num_classes": 5, "base_channels": 8, "levels": 5, "max_channels": 32},
    ],
)
def test_layout_is_the_built_networks_state_dict(fields: dict[str, int]) -> None:
    arch = Architecture(**fields)
    with torch.device("meta"):
        built = {k: tuple(v.shape) for k, v in UNet3D(arch).state_dict().items()}
    assert unet_tensor_shapes(arch) == built


def test_architecture_is_frozen_and_checked() -> None:
    arch = Architecture(num_classes=3)
    with pytest.raises(ValueError, match="frozen"):
        arch.levels = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="num_classes"):
        Architecture(num_classes=1)
    assert arch.size_divisor == 8 and arch.channels_at(5) == 256


_PLAIN_UNET_KWARGS = {
    "n_stages": 3,
    "features_per_stage": [4, 8, 16],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 3,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [2, 2, 2],
    "n_conv_per_stage_decoder": [2, 2],
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-5, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}


def _nnunet_settings(**kwargs: object) -> NnunetSettings:
    return NnunetSettings(
        source="test",
        dataset_name="Dataset901_Shapes",
        trainer="nnUNetTrainer",
        plans_name="nnUNetPlans",
        configuration="3d_fullres",
        folds=[0, 1],
        spacing_mm=(1.0, 1.0, 1.0),
        patch_size=(32, 32, 32),
        normalization=NnunetNormalization(scheme="ZScoreNormalization"),
        network_class="dynamic_network_architectures.architectures.unet.PlainConvUNet",
        network_kwargs={**_PLAIN_UNET_KWARGS, **kwargs},
        network_kwargs_requires_import=["conv_op", "norm_op", "dropout_op", "nonlin"],
    )


def test_nnunet_layout_is_every_folds_state_dict_and_the_runtime_splits_it() -> None:
    settings = _nnunet_settings()
    net = build_network(settings, num_classes=3)
    state = {fold_prefix(f) + k: v for f in settings.folds for k, v in net.state_dict().items()}
    assert nnunet_tensor_shapes(settings, 3) == {k: tuple(v.shape) for k, v in state.items()}
    for part in split_folds(state, settings.folds):
        net.load_state_dict(part, strict=True)


def test_plans_the_network_class_refuses_are_a_package_error() -> None:
    with pytest.raises(ModelPackageError, match="PlainConvUNet does not accept the plans'"):
        nnunet_tensor_shapes(_nnunet_settings(n_stages=9), 3)
