"""Time the RTSTRUCT and SEG writers for 10 ROIs on a 512 x 512 x 200 CT.

Usage::

    python benchmarks/writer_benchmark.py [--slices 200] [--repeat 3] [--peer-path DIR]

Builds a synthetic CT series (512 x 512 x N, 0.977 mm pixels, 2.5 mm slices,
HFS) and 10 realistic masks (body over every slice, lungs, liver, heart,
kidneys as two islands, spinal cord through every slice, bowel ring with a
hole, bladder, a 1-voxel marker), then times, best of ``--repeat``:

- ``contourd build``: ``write_rtstruct`` (tracing + dataset);
- ``contourd build+encode``: the same plus serialising to bytes;
- ``skimage baseline``: a typical converter: ``skimage.measure.find_contours``
  per slice (contours through pixel centres at level 0.5, not voxel edges),
  contour points as Python floats in pydicom DS elements, then encode;
- ``rt-utils`` (named peer, when importable; ``--peer-path`` adds a folder
  to ``sys.path``, e.g. one made with ``pip install --target DIR rt-utils
  opencv-python-headless``): ``RTStructBuilder.create_new`` + ``add_roi`` x10
  + ``save``; the series must be on disk, so reading it is timed separately;
- ``contourd SEG``: ``write_seg`` (highdicom BINARY) + encode, once.

Figures are recorded in docs/rtstruct.md.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inference.phantom import write_ct_series  # noqa: E402
from inference.roi_mask import AlgorithmInfo, RoiMask  # noqa: E402
from inference.rtstruct_writer import write_rtstruct  # noqa: E402
from inference.seg_writer import write_seg  # noqa: E402


def make_rois(shape: tuple[int, int, int]) -> list[RoiMask]:
    """Ten masks of realistic size on the [slice, row, column] grid."""
    nz, nr, nc = shape
    z, r, c = np.ogrid[0:nz, 0:nr, 0:nc]
    zc, rc, cc = nz / 2, nr / 2, nc / 2

    def ellipsoid(z0: float, r0: float, c0: float, az: float, ar: float, ac: float) -> np.ndarray:
        return ((z - z0) / az) ** 2 + ((r - r0) / ar) ** 2 + ((c - c0) / ac) ** 2 <= 1

    body = np.broadcast_to(((r - rc) / 180) ** 2 + ((c - cc) / 230) ** 2 <= 1, shape).copy()
    lung_r = ellipsoid(zc + 40, rc - 10, cc - 90, 50, 90, 60)
    lung_l = ellipsoid(zc + 40, rc - 10, cc + 90, 50, 90, 60)
    liver = ellipsoid(zc - 20, rc, cc - 80, 35, 80, 90)
    heart = ellipsoid(zc + 25, rc - 40, cc + 20, 25, 50, 55)
    kidneys = ellipsoid(zc - 40, rc + 60, cc - 80, 18, 25, 20) | ellipsoid(
        zc - 40, rc + 60, cc + 80, 18, 25, 20
    )
    cord = np.broadcast_to(((r - rc - 120) / 6) ** 2 + ((c - cc) / 6) ** 2 <= 1, shape).copy()
    bowel = ellipsoid(zc - 60, rc - 20, cc + 40, 20, 50, 50) & ~ellipsoid(
        zc - 60, rc - 20, cc + 40, 12, 30, 30
    )
    bladder = ellipsoid(zc - 85, rc - 10, cc, 12, 40, 45)
    marker = np.zeros(shape, dtype=bool)
    marker[nz // 2, nr // 2, nc // 2] = True
    masks = {
        "BODY": body,
        "Lung_R": lung_r,
        "Lung_L": lung_l,
        "Liver": liver,
        "Heart": heart,
        "Kidneys": kidneys,
        "SpinalCord": cord,
        "Bowel": bowel,
        "Bladder": bladder,
        "Marker": marker,
    }
    return [
        RoiMask(
            name=name,
            mask=np.ascontiguousarray(mask, dtype=bool),
            color_rgb=(255, (37 * i) % 256, 0),
            interpreted_type="EXTERNAL" if name == "BODY" else "ORGAN",
            label=i + 1,
        )
        for i, (name, mask) in enumerate(masks.items())
    ]


def best_of(repeat: int, func: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def skimage_baseline(headers: list, rois: list[RoiMask]) -> bytes:
    """A typical mask-to-RTSTRUCT loop: find_contours per slice, floats into DS."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence
    from skimage.measure import find_contours

    ipp = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    iop = np.array([float(v) for v in headers[0].ImageOrientationPatient])
    dr, dc = (float(v) for v in headers[0].PixelSpacing)
    ds = Dataset()
    roi_items = []
    for roi in rois:
        item = Dataset()
        contours = []
        for k in np.flatnonzero(roi.mask.any(axis=(1, 2))):
            for rc in find_contours(roi.mask[k].astype(np.uint8), 0.5):
                pts = ipp[k] + rc[:, 1:2] * dc * iop[:3] + rc[:, 0:1] * dr * iop[3:]
                c = Dataset()
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(pts)
                c.ContourData = [round(float(v), 3) for v in pts.ravel()]
                contours.append(c)
        item.ContourSequence = DicomSequence(contours)
        roi_items.append(item)
    ds.ROIContourSequence = DicomSequence(roi_items)
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peer-path", type=Path, default=None)
    args = parser.parse_args()
    shape = (args.slices, 512, 512)
    affine = np.diag([0.977, 0.977, 2.5, 1.0])
    affine[:3, 3] = [-250.0, -250.0, -250.0]
    algorithm = AlgorithmInfo("bench-model", "1.0.0", "ab" * 32, "0.1.0")
    rois = make_rois(shape)
    voxels = sum(int(r.mask.sum()) for r in rois)
    print(f"grid {shape[2]}x{shape[1]}x{shape[0]}, {len(rois)} ROIs, {voxels} voxels in masks")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        series = write_ct_series(
            Path(tmp) / "ct", np.full(shape, -1000, dtype=np.int16), affine, patient_position="HFS"
        )
        print(f"(writing the CT series took {time.perf_counter() - t0:.1f} s; not timed below)")
        headers = series.headers

        def ours() -> object:
            return write_rtstruct(headers, rois, algorithm, structure_set_label="bench")

        def ours_encoded() -> bytes:
            buffer = io.BytesIO()
            ours().save_as(buffer, enforce_file_format=True)  # type: ignore[attr-defined]
            return buffer.getvalue()

        t_build = best_of(args.repeat, ours)
        t_encoded = best_of(args.repeat, ours_encoded)
        size_mb = len(ours_encoded()) / 1e6
        print(f"contourd build          {t_build:7.3f} s")
        print(f"contourd build+encode   {t_encoded:7.3f} s  ({size_mb:.1f} MB)")
        t_skimage = best_of(1, lambda: skimage_baseline(headers, rois))
        print(f"skimage baseline        {t_skimage:7.3f} s  (find_contours + DS floats + encode)")

        if args.peer_path is not None:
            sys.path.insert(0, str(args.peer_path))
        try:
            from rt_utils import RTStructBuilder
        except ImportError:
            print("rt-utils                  n/a  (pip install rt-utils opencv-python-headless)")
        else:
            t0 = time.perf_counter()
            rtstruct = RTStructBuilder.create_new(dicom_series_path=str(series.directory))
            t_read = time.perf_counter() - t0
            t0 = time.perf_counter()
            for roi in rois:
                rtstruct.add_roi(
                    mask=np.transpose(roi.mask, (1, 2, 0)), color=list(roi.color_rgb), name=roi.name
                )
            rtstruct.save(str(Path(tmp) / "rt-utils.dcm"))
            t_peer = time.perf_counter() - t0
            print(f"rt-utils add_roi+save   {t_peer:7.3f} s  (+ {t_read:.1f} s reading the series)")

        t0 = time.perf_counter()
        seg = write_seg(headers, rois, algorithm)
        buffer = io.BytesIO()
        seg.save_as(buffer)
        print(f"contourd SEG+encode     {time.perf_counter() - t0:7.3f} s  (highdicom BINARY)")
    verdict = "PASS" if t_encoded < 1.0 else "FAIL"
    print(f"target: RTSTRUCT build+encode < 1 s for 10 ROIs: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
