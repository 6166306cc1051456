"""Prometheus figures of the feedback loop: rolling medians per model version and ROI.

Read from the feedback tables at scrape time, over the last
``feedback.metrics_window_days`` days (shadow comparisons labelled
``shadow="true"``):

- ``contourd_feedback_sets{model, version, roi, shadow}``: ROIs compared;
- ``contourd_feedback_unchanged{...}``: of them, accepted unchanged;
- ``contourd_feedback_median{..., figure}``: the median of ``dice``,
  ``surface_dice``, ``hd95_mm``, ``added_path_length_mm`` and
  ``volume_change_pct``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.feedback_store import FeedbackStore

LABELS = ["model", "version", "roi", "shadow"]


class FeedbackCollector(Collector):
    """Collector of the rolling feedback medians.

    Parameters
    ----------
    data_dir
        The node's data folder.
    window_days
        Returns the rolling window in days (read at each scrape: hot reload).
    """

    def __init__(self, data_dir: Path, window_days: Callable[[], float]) -> None:
        self.data_dir = Path(data_dir)
        self.window_days = window_days

    def collect(self) -> Iterator[Metric]:
        """Yield the metrics listed in the module docstring."""
        days = self.window_days()
        store = FeedbackStore(self.data_dir)
        try:
            summary = store.summary(since=time.time() - days * 86400.0)
        finally:
            store.close()
        window = f"over the last {days:g} days"
        sets = GaugeMetricFamily(
            "contourd_feedback_sets", f"Reviewed ROIs compared, {window}", labels=LABELS
        )
        unchanged = GaugeMetricFamily(
            "contourd_feedback_unchanged",
            f"Reviewed ROIs accepted unchanged, {window}",
            labels=LABELS,
        )
        median = GaugeMetricFamily(
            "contourd_feedback_median",
            f"Median of a feedback figure (sent vs approved), {window}",
            labels=[*LABELS, "figure"],
        )
        for s in summary:
            labels = [s.model, s.model_version, s.roi, "true" if s.shadow else "false"]
            sets.add_metric(labels, float(s.sets))
            unchanged.add_metric(labels, float(s.counts["unchanged"]))
            for figure, value in s.medians.items():
                if value is not None:
                    median.add_metric([*labels, figure], float(value))
        yield sets
        yield unchanged
        yield median
