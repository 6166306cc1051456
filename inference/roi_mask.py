"""The hand-over between segmentation and the output writers.

Everyone who produces masks (``inference.pipeline``) or writes them
(``inference.rtstruct_writer``, ``inference.seg_writer``) imports these two
classes from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RoiMask:
    """One region of interest as a boolean mask on the source image grid.

    Parameters
    ----------
    name : str
        ROI name as the planning system shows it (clinic overrides already
        applied by the caller via ``ApprovedModel.effective_rois()``).
    mask : numpy.ndarray
        Boolean array indexed ``[slice, row, column]`` on the SOURCE grid: one
        plane per source image, planes in the order of ``source_headers`` as
        given to the writers (sorted by increasing position along the slice
        normal ``row_direction x column_direction``), rows and columns as in
        the source images' pixel data.
    color_rgb : tuple[int, int, int]
        Display colour, each component 0..255.
    interpreted_type : str
        RT ROI Interpreted Type (``ORGAN``, ``EXTERNAL``, ``AVOIDANCE``, ``PTV``...).
    label : int
        Label value of the ROI in the model's output (1-based), used as
        ROI Number / Segment Number.
    algorithm : AlgorithmInfo or None
        The model that drew this ROI, when a structure set merges several
        models; None: the structure set's own algorithm.
    tg263_name : str or None
        TG-263 standard name when the model card gives one.
    """

    name: str
    mask: np.ndarray
    color_rgb: tuple[int, int, int]
    interpreted_type: str
    label: int
    tg263_name: str | None = None
    algorithm: AlgorithmInfo | None = None


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identification of the algorithm that made the masks.

    Parameters
    ----------
    model_name : str
        Model name from the card, e.g. ``"hn-oar"``.
    model_version : str
        Model version (semver), e.g. ``"1.3.0"``.
    weights_sha256 : str or None
        Hex sha256 of the weights file that ran (None for classical models).
    software_version : str
        contourd version (``contourd.__version__``).
    parameters : tuple of str
        How the model ran, ``key=value`` each (e.g. ``"nnunet_mode=fast"``),
        written after the version and hash into Algorithm Parameters.
    """

    model_name: str
    model_version: str
    weights_sha256: str | None
    software_version: str
    parameters: tuple[str, ...] = ()
