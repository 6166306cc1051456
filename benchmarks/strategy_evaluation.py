"""Score hn-oar with sliding-window inference, the same way as the default whole-volume pass.

``precision_check.py`` showed that the two strategies give different labels.
This script answers which one is closer to the clinical contours: it runs
``training.evaluate.evaluate_model`` on the OpenKBP validation cases with
the sliding window forced (``max_whole_volume_voxels=1``), in bf16 like the
default, and prints the same table as ``contourd evaluate``.

    python benchmarks/strategy_evaluation.py [--package model_store/builtin/hn-oar]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from training.evaluate import evaluate_model, format_table, load_package_model

REPO = Path(__file__).resolve().parents[1]
VALIDATION = REPO.parent / "shared" / "data" / "openkbp" / "validation-pats"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--package", type=Path, default=REPO / "model_store/builtin/hn-oar")
    args = parser.parse_args()
    model = load_package_model(args.package)
    t0 = time.perf_counter()
    result = evaluate_model(model, VALIDATION, max_whole_volume_voxels=1)
    print(f"sliding window (bf16), {len(result.cases)} cases in {time.perf_counter() - t0:.0f} s")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
