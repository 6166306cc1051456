"""Drawing ROI contours on CT slices: the results' preview montage and the job page's slices.

Display window: W 400 / L 40 HU (soft tissue). Each ROI is drawn as its
mask's outline in its display colour.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from inference.roi_mask import RoiMask

WINDOW_CENTRE_HU = 40.0
WINDOW_WIDTH_HU = 400.0


def draw_slice(ax: Any, volume_hu: np.ndarray, rois: Sequence[RoiMask], k: int) -> None:
    """Draw slice ``k`` of ``volume_hu`` (``[slice, row, column]``) with the ROIs' outlines."""
    ax.imshow(
        volume_hu[k],
        cmap="gray",
        vmin=WINDOW_CENTRE_HU - WINDOW_WIDTH_HU / 2,
        vmax=WINDOW_CENTRE_HU + WINDOW_WIDTH_HU / 2,
    )
    for roi in rois:
        if roi.mask[k].any():
            color = tuple(c / 255 for c in roi.color_rgb)
            ax.contour(roi.mask[k].astype(np.uint8), levels=[0.5], colors=[color], linewidths=1)


def slice_png(
    volume_hu: np.ndarray, rois: Sequence[RoiMask], k: int, *, size_px: int = 512
) -> bytes:
    """One slice with contours as PNG bytes (thread-safe: no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.axis("off")
    draw_slice(ax, volume_hu, rois, k)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
