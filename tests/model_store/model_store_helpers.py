"""Builders of small, real model packages for the model store tests.

A tiny U-Net (base 4 channels, 2 levels) is saved with safetensors, so the
packages are what a training run writes, only small.
"""

from __future__ import annotations

import copy
import shutil
import zipfile
from pathlib import Path
from typing import Any

import yaml

TINY_ARCH = {"in_channels": 1, "num_classes": 3, "base_channels": 4, "levels": 2, "max_channels": 8}


def unet_card(name: str = "tiny-hn", version: str = "1.0.0", **changes: Any) -> dict[str, Any]:
    """A valid unet card with two ROIs (Parotid_L label 1, Parotid_R label 2)."""
    card: dict[str, Any] = {
        "name": name,
        "version": version,
        "description": "Tiny test network",
        "intended_use": "organs at risk on head-and-neck CT; not for lesions",
        "limitations": "test model, random weights",
        "originator": "test suite",
        "institution": "nowhere",
        "modality": "CT",
        "body_site": "headneck",
        "model_type": "unet",
        "rois": [
            {
                "label": 1,
                "name": "Parotid_L",
                "color": [255, 0, 0],
                "interpreted_type": "ORGAN",
                "tg263_name": "Parotid_L",
                "volume_range_cc": [5, 60],
                "laterality": "L",
            },
            {
                "label": 2,
                "name": "Parotid_R",
                "color": [0, 0, 255],
                "interpreted_type": "ORGAN",
                "tg263_name": "Parotid_R",
                "laterality": "R",
            },
        ],
        "preprocessing": {
            "spacing_mm": [2.0, 2.0, 2.5],
            "orientation": "LPS",
            "normalization": {"kind": "ct_clip_scale", "min_hu": -1000, "max_hu": 1000},
            "patch_size": [16, 32, 32],
        },
        "architecture": dict(TINY_ARCH),
        "postprocessing": {1: {"largest_component": True, "fill_holes": True}},
        "training": {"cases": 12, "validation_cases": 3, "dataset": "synthetic", "epochs": 1},
        "evaluation": {
            "dataset": "synthetic",
            "cases": 3,
            "per_roi": {"Parotid_L": {"dice": 0.5, "hd95_mm": 9.0}},
        },
    }
    card.update(copy.deepcopy(changes))
    return card


def save_unet_weights(path: Path, arch: dict[str, Any] | None = None, seed: int = 0) -> None:
    """Save the state dict of a freshly initialised UNet3D with safetensors."""
    import torch
    from safetensors.torch import save_file

    from inference.unet import UNet3D
    from model_store.card import Architecture

    torch.manual_seed(seed)
    net = UNet3D(Architecture(**(arch or TINY_ARCH)))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def write_package(
    root: Path,
    card: dict[str, Any] | None = None,
    *,
    weights_arch: dict[str, Any] | None = None,
    weights: bool = True,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write a package folder: model.yaml, weights.safetensors (unless ``weights=False``)."""
    root.mkdir(parents=True, exist_ok=True)
    card = card if card is not None else unet_card()
    (root / "model.yaml").write_text(yaml.safe_dump(card, sort_keys=False), encoding="utf-8")
    if weights:
        save_unet_weights(root / "weights.safetensors", weights_arch or card.get("architecture"))
    (root / "README.md").write_text("# Tiny test model\nRandom weights.\n", encoding="utf-8")
    for rel, data in (extra_files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def zip_folder(folder: Path, zip_path: Path, *, top_folder: str | None = None) -> Path:
    """Zip a package folder, flat or under one top folder."""
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                rel = path.relative_to(folder).as_posix()
                archive.write(path, f"{top_folder}/{rel}" if top_folder else rel)
    return zip_path


def copy_builtin_body(dest_builtin: Path) -> None:
    """Copy the shipped ``body`` built-in into a test built-in folder."""
    src = Path(__file__).resolve().parents[2] / "model_store" / "builtin" / "body"
    shutil.copytree(src, dest_builtin / "body")
