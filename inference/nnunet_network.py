"""Split an imported nnU-Net model's weights file into one state dict per fold.

The network itself is built from the card's ``nnunet`` section by
:func:`model_store.network_layout.build_network` (the package import checks
use the same function); weights of all folds live in one safetensors file,
each tensor prefixed ``fold_<k>.`` (:func:`model_store.network_layout.fold_prefix`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from contourd.errors import InferenceError
from model_store.network_layout import fold_prefix


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
