"""Check bf16 whole-volume inference (the default) against fp32 sliding-window inference.

Runs the trained ``hn-oar`` package on OpenKBP validation cases twice on the
model grid: (a) bf16 autocast, whole volume in one pass (the default on this
CPU) and (b) fp32, sliding window with the card's patch size (nnU-Net's
reference strategy). Prints, per ROI, the Dice between the two label maps,
and the time of each pass.

    python benchmarks/precision_check.py [--package model_store/builtin/hn-oar] [--cases 8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from inference.predictor import Predictor
from training.evaluate import load_package_model
from training.openkbp_dataset import BlankImageError, list_cases, load_case
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
    config = card.architecture.to_unet_config()
    norm = card.preprocessing.normalization
    patch = tuple(card.preprocessing.patch_size)
    fast = Predictor(model.state_dict, config, precision="bf16", patch_size_zyx=patch)
    ref = Predictor(model.state_dict, config, precision="fp32", patch_size_zyx=patch)
    names = [r.name for r in sorted(card.rois, key=lambda r: r.label)]
    dices: dict[str, list[float]] = {n: [] for n in names}
    t_fast = t_ref = 0.0
    done = 0
    for case_id in list_cases(VALIDATION):
        if done == args.cases:
            break
        try:
            case = load_case(VALIDATION / case_id, SOURCES, card.preprocessing.spacing_mm)
        except BlankImageError:
            continue  # blank CT in the dataset (see docs/training.md)
        done += 1
        image = normalise_hu(case.image_hu, norm.min_hu, norm.max_hu)
        t0 = time.perf_counter()
        a = fast.predict_proba(image).argmax(0)
        t1 = time.perf_counter()
        b = ref.predict_proba(image, force_sliding_window=True).argmax(0)
        t2 = time.perf_counter()
        t_fast += t1 - t0
        t_ref += t2 - t1
        for label, name in enumerate(names, start=1):
            pa, pb = a == label, b == label
            total = pa.sum() + pb.sum()
            if total:
                dices[name].append(float(2 * np.logical_and(pa, pb).sum() / total))
    print(f"{args.cases} OpenKBP validation cases, model grid {card.preprocessing.spacing_mm} mm")
    print(
        f"bf16 whole volume: {t_fast / args.cases:.2f} s/case; "
        f"fp32 sliding window: {t_ref / args.cases:.2f} s/case "
        f"(x{t_ref / max(t_fast, 1e-9):.1f})"
    )
    print("Dice between the two outputs per ROI (mean, min):")
    for name, values in dices.items():
        if values:
            print(f"  {name:<14} {np.mean(values):.3f}  {np.min(values):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
