"""Check the default bf16 sliding window, and bf16 whole volume, against fp32 sliding window.

Runs the trained ``hn-oar`` package on OpenKBP validation cases on the model
grid three ways: (a) bf16 autocast with the card's sliding window (the
default on this CPU), (b) bf16 autocast, whole volume in one pass, and (c)
fp32 with the card's sliding window (nnU-Net's reference strategy). Prints,
per ROI, the Dice between (a) and (c) and between (b) and (c), and the time
of each pass.

    python benchmarks/precision_check.py [--package model_store/builtin/hn-oar] [--cases 8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from contourd.errors import BlankImageError
from inference.predictor import Predictor
from training.evaluate import load_package_model
from training.openkbp_dataset import list_cases, load_case
from training.trainer import normalise_hu

REPO = Path(__file__).resolve().parents[1]
VALIDATION = REPO.parent / "shared" / "data" / "openkbp" / "validation-pats"
SOURCES = [
    ["Brainstem"],
    ["SpinalCord"],
    ["LeftParotid"],
    ["RightParotid"],
    ["Esophagus"],
    ["Larynx"],
    ["Mandible"],
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--package", type=Path, default=REPO / "model_store/builtin/hn-oar")
    parser.add_argument("--cases", type=int, default=8)
    args = parser.parse_args()
    model = load_package_model(args.package)
    card = model.card
    assert card.architecture is not None and card.preprocessing is not None
    config = card.architecture
    norm = card.preprocessing.normalization
    patch = tuple(card.preprocessing.patch_size)
    overlap = card.inference.overlap
    common: dict[str, Any] = {"patch_size_zyx": patch, "overlap": overlap}
    variants = {
        "bf16 sliding window": Predictor(
            model.state_dict, config, precision="bf16", max_whole_volume_voxels=0, **common
        ),
        "bf16 whole volume": Predictor(
            model.state_dict, config, precision="bf16", max_whole_volume_voxels=10**9, **common
        ),
    }
    ref = Predictor(model.state_dict, config, precision="fp32", max_whole_volume_voxels=0, **common)
    names = [r.name for r in sorted(card.rois, key=lambda r: r.label)]
    dices: dict[str, dict[str, list[float]]] = {v: {n: [] for n in names} for v in variants}
    seconds = dict.fromkeys([*variants, "fp32 sliding window"], 0.0)
    done = 0
    for case_id in list_cases(VALIDATION):
        if done == args.cases:
            break
        try:
            case = load_case(VALIDATION / case_id, SOURCES, card.preprocessing.spacing_mm)
        except BlankImageError:
            continue  # blank CT in the dataset (see docs/training.md)
        done += 1
        assert norm.kind == "ct_clip_scale"
        image = normalise_hu(case.image_hu, norm.min_hu, norm.max_hu)
        t0 = time.perf_counter()
        reference = ref.predict_proba(image).argmax(0)
        seconds["fp32 sliding window"] += time.perf_counter() - t0
        for variant, predictor in variants.items():
            t0 = time.perf_counter()
            labels = predictor.predict_proba(image).argmax(0)
            seconds[variant] += time.perf_counter() - t0
            for label, name in enumerate(names, start=1):
                pa, pb = labels == label, reference == label
                total = pa.sum() + pb.sum()
                if total:
                    dices[variant][name].append(float(2 * np.logical_and(pa, pb).sum() / total))
    print(
        f"{card.name} {card.version}: {done} OpenKBP validation cases, model grid "
        f"{card.preprocessing.spacing_mm} mm, patch {list(patch)}, overlap {overlap}"
    )
    for variant, total_s in seconds.items():
        print(f"{variant:<22} {total_s / max(done, 1):.2f} s/case")
    print("Dice against fp32 sliding window per ROI (mean, min):")
    print(f"  {'ROI':<14} " + "  ".join(f"{v:<22}" for v in variants))
    for name in names:
        cells = []
        for variant in variants:
            values = dices[variant][name]
            cells.append(f"{np.mean(values):.3f} {np.min(values):.3f}" if values else "-")
        print(f"  {name:<14} " + "  ".join(f"{c:<22}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
