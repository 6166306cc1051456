"""The tensors a package's weights must hold, derived from its card.

The import checks (:mod:`model_store.package`) compare every tensor name and
shape of ``weights.safetensors`` with what the card's network has, before
anything is loaded. The layout is worked out here so that ``model_store``
needs nothing of ``inference`` (dependencies point from ``inference`` to
``model_store``, never back):

- ``unet``: :func:`unet_tensor_shapes` computes the state dict of
  :class:`inference.unet.UNet3D` from the card's
  :class:`~model_store.card.Architecture` without torch
  (``tests/model_store/test_network_layout.py`` checks it against the built
  network for several architectures).
- ``nnunet``: the network is a ``dynamic-network-architectures`` class named
  by the card; :func:`build_network` builds it (the runtime
  :mod:`inference.nnunet_runtime` uses the same function) and
  :func:`nnunet_tensor_shapes` builds it on torch's meta device (no memory).
  Weights of all folds live in one file, each tensor prefixed ``fold_<k>.``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from contourd.errors import ModelPackageError
from model_store.card import Architecture
from model_store.nnunet_card import KWARG_MODULE_PREFIX, NETWORK_MODULE_PREFIX, NnunetSettings

if TYPE_CHECKING:
    import torch

Shapes = dict[str, tuple[int, ...]]


def _conv_block(prefix: str, in_ch: int, out_ch: int) -> Shapes:
    """A ``ConvBlock``: conv (no bias), InstanceNorm (affine), LeakyReLU, twice."""
    return {
        f"{prefix}.0.weight": (out_ch, in_ch, 3, 3, 3),
        f"{prefix}.1.weight": (out_ch,),
        f"{prefix}.1.bias": (out_ch,),
        f"{prefix}.3.weight": (out_ch, out_ch, 3, 3, 3),
        f"{prefix}.4.weight": (out_ch,),
        f"{prefix}.4.bias": (out_ch,),
    }


def unet_tensor_shapes(arch: Architecture) -> Shapes:
    """Tensor name -> shape of :class:`inference.unet.UNet3D`'s state dict for ``arch``.

    Encoders at every level (stride-2 from level 1), one transposed-convolution
    upsampler and one decoder per level above the deepest, a 1x1x1 head with a
    bias. Kernel shapes are ``(out, in, kz, ky, kx)``; a transposed
    convolution's are ``(in, out, kz, ky, kx)``.
    """
    chans = [arch.channels_at(level) for level in range(arch.levels)]
    shapes: Shapes = {}
    for level, ch in enumerate(chans):
        in_ch = arch.in_channels if level == 0 else chans[level - 1]
        shapes |= _conv_block(f"encoders.{level}", in_ch, ch)
    for i, level in enumerate(range(arch.levels - 2, -1, -1)):
        shapes[f"upsamplers.{i}.weight"] = (chans[level + 1], chans[level], 2, 2, 2)
        shapes |= _conv_block(f"decoders.{i}", 2 * chans[level], chans[level])
    shapes["head.weight"] = (arch.num_classes, chans[0], 1, 1, 1)
    shapes["head.bias"] = (arch.num_classes,)
    return shapes


def locate(dotted: str, prefix: str) -> Any:
    """Import ``module.attr`` named by ``dotted``, which must start with ``prefix``.

    Raises
    ------
    ModelPackageError
        When the name is outside ``prefix`` or cannot be imported.
    """
    if not dotted.startswith(prefix):
        raise ModelPackageError(f"{dotted!r} is outside {prefix}; contourd imports nothing else")
    module_name, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ModelPackageError(
            f"cannot import {dotted} ({err}); install a dynamic-network-architectures version "
            "that has it (pip install 'dynamic-network-architectures>=0.3')"
        ) from err


def build_network(settings: NnunetSettings, num_classes: int) -> torch.nn.Module:
    """The (uninitialised) nnU-Net network the card's plans describe, in eval mode.

    Parameters
    ----------
    settings
        The card's ``nnunet`` section.
    num_classes
        Output channels (background plus one per label).

    Raises
    ------
    ModelPackageError
        When the class cannot be imported or does not take the plans' arguments.
    """
    kwargs = dict(settings.network_kwargs)
    for key in settings.network_kwargs_requires_import:
        if kwargs.get(key) is not None:
            kwargs[key] = locate(str(kwargs[key]), KWARG_MODULE_PREFIX)
    kwargs["deep_supervision"] = False
    cls = locate(settings.network_class, NETWORK_MODULE_PREFIX)
    try:
        net = cls(input_channels=settings.num_input_channels, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:  # the class checks with assert
        raise ModelPackageError(
            f"{settings.network_class} does not accept the plans' arguments ({err}); the "
            "installed dynamic-network-architectures differs from the one nnU-Net trained with"
        ) from err
    return net.eval()


def fold_prefix(fold: int | str) -> str:
    """``"fold_0."``: the tensor-name prefix of one fold in the weights file."""
    return f"fold_{fold}."


def nnunet_tensor_shapes(settings: NnunetSettings, num_classes: int) -> Shapes:
    """Tensor name -> shape of every fold's weights, built on the meta device (no memory)."""
    import torch

    with torch.device("meta"):
        net = build_network(settings, num_classes)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    return {fold_prefix(f) + k: s for f in settings.folds for k, s in shapes.items()}
