"""Build an nnU-Net v2 network from a card's ``nnunet`` section.

The network comes from the ``dynamic-network-architectures`` package (the one
nnU-Net itself uses), so plain and residual-encoder U-Nets load alike. Only
classes under ``dynamic_network_architectures.architectures`` and keyword
arguments naming ``torch.nn`` classes are imported (checked on the card).
Weights of all folds live in one safetensors file, each tensor prefixed
``fold_<k>.``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch

from contourd.errors import InferenceError
from model_store.nnunet_card import KWARG_MODULE_PREFIX, NETWORK_MODULE_PREFIX, NnunetSettings


def locate(dotted: str, prefix: str) -> Any:
    """Import ``module.attr`` named by ``dotted``, which must start with ``prefix``.

    Raises
    ------
    InferenceError
        When the name is outside ``prefix`` or cannot be imported.
    """
    if not dotted.startswith(prefix):
        raise InferenceError(f"{dotted!r} is outside {prefix}; contourd imports nothing else")
    module_name, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise InferenceError(
            f"cannot import {dotted} ({err}); install a dynamic-network-architectures version "
            "that has it (pip install 'dynamic-network-architectures>=0.3')"
        ) from err


def build_network(settings: NnunetSettings, num_classes: int) -> torch.nn.Module:
    """The (uninitialised) network the plans describe, in eval mode.

    Parameters
    ----------
    settings
        The card's ``nnunet`` section.
    num_classes
        Output channels (background plus one per label).
    """
    kwargs = dict(settings.network_kwargs)
    for key in settings.network_kwargs_requires_import:
        if kwargs.get(key) is not None:
            kwargs[key] = locate(str(kwargs[key]), KWARG_MODULE_PREFIX)
    kwargs["deep_supervision"] = False
    cls = locate(settings.network_class, NETWORK_MODULE_PREFIX)
    try:
        net = cls(input_channels=settings.num_input_channels, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise InferenceError(
            f"{settings.network_class} does not accept the plans' arguments ({err}); the "
            "installed dynamic-network-architectures differs from the one nnU-Net trained with"
        ) from err
    return net.eval()


def fold_prefix(fold: int | str) -> str:
    """``"fold_0."``: the tensor-name prefix of one fold in the weights file."""
    return f"fold_{fold}."


def split_folds(
    state: Mapping[str, torch.Tensor], folds: list[int | str]
) -> list[dict[str, torch.Tensor]]:
    """One state dict per fold from the prefixed tensors of the weights file.

    Raises
    ------
    InferenceError
        When a fold the card lists has no tensors.
    """
    out = []
    for fold in folds:
        prefix = fold_prefix(fold)
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not part:
            raise InferenceError(f"weights hold no tensors for fold {fold} ({prefix}*)")
        out.append(part)
    return out


def expected_shapes(settings: NnunetSettings, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of every fold's weights, built on the meta device (no memory)."""
    with torch.device("meta"):
        net = build_network(settings, num_classes)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    return {fold_prefix(f) + k: s for f in settings.folds for k, s in shapes.items()}
