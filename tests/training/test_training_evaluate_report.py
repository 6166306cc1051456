"""The evaluation summary, card section and report from known per-case metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml

from model_store.card import Evaluation
from training.evaluate import CaseResult, EvaluationResult, format_table, write_report
from training.metrics import compute_metrics


def _result() -> EvaluationResult:
    cases = []
    overlays: dict[str, list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]] = {"Cube": []}
    img = np.zeros((12, 30, 30), np.float32)
    for k in range(4):  # cube of 10 voxels shifted by k: Dice 1 - k/10
        ref = np.zeros((12, 30, 30), bool)
        ref[1:11, 5:15, 5:15] = True
        pred = np.roll(ref, k, axis=2)
        cases.append(
            CaseResult(f"c{k}", {"Cube": compute_metrics(pred, ref, (2.0, 1.0, 1.0))}, 0.1)
        )
        overlays["Cube"].append((f"c{k}", img[5], ref[5], pred[5]))
    empty = np.zeros((12, 30, 30), bool)
    ref = np.zeros((12, 30, 30), bool)
    ref[2:4, 2:4, 2:4] = True
    cases.append(CaseResult("c4", {"Dot": compute_metrics(empty, ref, (2.0, 1.0, 1.0))}, 0.1))
    overlays["Dot"] = [("c4", img[2], ref[2], empty[2])]
    return EvaluationResult("m 1.0.0", "set", ["Cube", "Dot", "Never"], cases, 2.0, overlays)


def test_summary_gives_median_iqr_and_mean_per_roi() -> None:
    summary = _result().summary()
    cube = summary["Cube"]
    assert cube["cases"] == 4
    assert cube["dice"]["median"] == np.median([1.0, 0.9, 0.8, 0.7])
    assert cube["dice"]["q1"] == np.percentile([1.0, 0.9, 0.8, 0.7], 25)
    assert cube["hd95_mm"]["median"] == 1.5  # shifts of 0..3 voxels of 1 mm
    assert summary["Dot"]["hd95_mm"]["median"] == math.inf  # nothing predicted
    assert summary["Never"] == {"cases": 0, "dice": None, "hd95_mm": None, "msd_mm": None,
                                "surface_dice": None}  # fmt: skip
    table = format_table(_result())
    assert "Cube" in table and "0.850" in table and "not contoured" in table


def test_card_evaluation_round_trips_through_yaml_with_infinite_distances() -> None:
    section = _result().to_card_evaluation()
    assert section.cases == 5
    assert section.per_roi["Cube"].dice == 0.85
    assert section.per_roi["Dot"].hd95_mm == math.inf
    again = Evaluation.model_validate(yaml.safe_load(yaml.safe_dump(section.model_dump())))
    assert again == section


def test_report_has_tables_plots_and_overlays(tmp_path: Path) -> None:
    page = write_report(_result(), tmp_path)
    html = page.read_text()
    assert "<td>Cube</td><td>4</td>" in html
    for name in ("boxplots.png", "overlay_Cube.png", "overlay_Dot.png", "report.md", "metrics.csv"):
        assert (tmp_path / name).is_file(), name
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 5
