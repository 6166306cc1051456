"""Score a U-Net package with each inference strategy, the way ``contourd evaluate`` does.

The same as ``contourd evaluate --strategy/--overlap/--no-crop/--mirror`` on
the OpenKBP validation folder. ``precision_check.py`` showed that
whole-volume and sliding-window inference
give different labels. This script answers which one is closer to the
clinical contours, and what the window overlap buys: it runs
``training.evaluate.evaluate_model`` on the OpenKBP validation cases (blank
CTs left out) with the package's card changed to the strategy asked for, in
bf16 like the default, and prints the same table as ``contourd evaluate``.

    python benchmarks/strategy_evaluation.py [--package model_store/builtin/hn-oar] \\
        [--strategy sliding_window|whole_volume] [--overlap 0.25] [--no-crop] [--mirror]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from daemon.cli.evaluate import describe_inference, with_inference_overrides
from training.evaluate import evaluate_model, format_table, load_package_model

REPO = Path(__file__).resolve().parents[1]
VALIDATION = REPO.parent / "shared" / "data" / "openkbp" / "validation-pats"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--package", type=Path, default=REPO / "model_store/builtin/hn-oar")
    parser.add_argument(
        "--strategy", choices=["sliding_window", "whole_volume"], default="sliding_window"
    )
    parser.add_argument("--overlap", type=float, default=None, help="default: the card's")
    parser.add_argument(
        "--no-crop", action="store_true", help="run the network on the whole grid, not the patient"
    )
    parser.add_argument(
        "--mirror", action="store_true", help="add left-right mirror test-time augmentation"
    )
    args = parser.parse_args()
    model = with_inference_overrides(load_package_model(args.package), args)
    t0 = time.perf_counter()
    result = evaluate_model(model, VALIDATION)
    print(
        f"{model.card.name} {model.card.version}, {describe_inference(model.card)} (bf16), "
        f"{len(result.cases)} cases in {time.perf_counter() - t0:.0f} s"
    )
    print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
