"""The weights layout model_store derives from a card is the state dict UNet3D really has."""

from __future__ import annotations

import pytest
import torch

from inference.unet import UNet3D
from model_store.card import Architecture
from model_store.network_layout import unet_tensor_shapes


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
