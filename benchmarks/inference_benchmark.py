"""Time and peak memory of the inference stages on a 512 x 512 x 200 CT.

Usage::

    python benchmarks/inference_benchmark.py [--slices 200] [--threads 2] [--device cpu]

Writes a synthetic CT series (512 x 512 x N, 0.977 mm pixels, 2.5 mm slices,
int16 DICOM) to a temporary folder, then runs each configuration in a FRESH
Python process (so one run's caches and allocator state do not help the
next):

- ``body``: the built-in classical body model;
- ``hn-oar bf16``: the built-in hn-oar package as the worker runs it
  (``Predictor.from_model``): its card's preprocessing, patch and inference
  settings (sliding window, 0.25 overlap, cropped to the patient, by
  default), precision auto (bf16 autocast on CPUs with AVX512-BF16);
- ``hn-oar bf16 whole``: the same with one whole-volume pass (the faster,
  less accurate strategy);
- ``hn-oar fp32``: the card's strategy in plain fp32 eager mode: the named
  peer the bf16 default is compared with.

Per stage it prints wall time and the peak resident set size (RSS) during
the stage, sampled from /proc/self/statm every 5 ms by a thread (tracemalloc
does not see torch's allocations), plus the process's ru_maxrss at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


def write_ct(out_dir: Path, slices: int, body_mm: tuple[float, float] = (340.0, 240.0)) -> None:
    """A 512 x 512 x ``slices`` CT of an elliptic 'patient' on a couch.

    ``body_mm`` is the ellipse's width (patient left-right) and depth
    (anterior-posterior) in mm: the default is torso-sized, with lungs and a
    spine; 160 x 200 is head-sized (the lungs then fall outside the body).
    """
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    px = 500.0 / 512
    yy, xx = np.mgrid[0:512, 0:512]
    x = (xx - 255.5) * px
    y = (yy - 255.5) * px
    rng = np.random.default_rng(0)
    for k in range(slices):
        z = k * 2.5
        hu = np.full((512, 512), -1000.0)
        body = (x / (body_mm[0] / 2)) ** 2 + (y / (body_mm[1] / 2)) ** 2 <= 1
        hu[body] = 40
        hu[body & (((x - 70) / 50) ** 2 + (y / 60) ** 2 <= 1)] = -850
        hu[body & (((x + 70) / 50) ** 2 + (y / 60) ** 2 <= 1)] = -850
        hu[((x / 15) ** 2 + ((y - 80) / 15) ** 2) <= 1] = 700 + z % 50
        hu[440:452, :] = 200  # couch
        hu += rng.normal(0, 15, hu.shape)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientPosition = "CT", "HFS"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-249.5, -249.5, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [px, px]
        ds.SliceThickness = 2.5
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.round(hu + 1024).astype(np.int16).tobytes()
        ds.save_as(out_dir / f"{k:04d}.dcm", enforce_file_format=True)


class PeakRss:
    """Samples this process's RSS every 5 ms; ``stage()`` returns the peak since the last call."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * PAGE

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    def stage(self) -> int:
        peak = max(self.peak, self.rss())
        self.overall = max(getattr(self, "overall", 0), peak)
        self.peak = self.rss()
        return peak


def organ_like_probabilities(grid: Any, num_classes: int) -> Any:
    """Softmax-like maps with one sphere per organ (radii 8-25 mm) inside the body."""
    import numpy as np

    nz, ny, nx = grid.size_zyx
    sx, sy, sz = grid.spacing_mm
    ox, oy, oz = grid.origin_lps_mm
    z = oz + sz * np.arange(nz)[:, None, None]
    y = oy + sy * np.arange(ny)[None, :, None]
    x = ox + sx * np.arange(nx)[None, None, :]
    zc = oz + sz * nz / 2
    logits = np.zeros((num_classes, nz, ny, nx), dtype=np.float32)
    for c in range(1, num_classes):
        radius = 8.0 + 17.0 * (c - 1) / max(num_classes - 2, 1)
        cx, cy, cz = -60.0 + 20.0 * c, -30.0 + 8.0 * c, zc - 40.0 + 12.0 * c
        dist = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)
        logits[c] = (radius - dist) / 2.0
    logits -= logits.max(axis=0, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=0, keepdims=True)
    return probs.astype(np.float32)


def run_config(series_dir: Path, config: str, threads: int, device: str) -> dict[str, object]:
    """One configuration, all stages, in this (fresh) process."""
    import resource

    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(REPO))
    from inference.body_outline import body_outline
    from inference.postprocess import Cleanup, probabilities_to_masks
    from inference.predictor import Precision, Predictor
    from inference.preprocess import preprocess
    from inference.volume import load_series
    from training.evaluate import load_package_model

    meter = PeakRss()
    figures: dict[str, object] = {"config": config}
    meter.stage()
    t0 = time.perf_counter()
    total0 = t0
    volume = load_series(sorted(series_dir.iterdir()))
    figures["load"] = (time.perf_counter() - t0, meter.stage())
    if config == "body":
        t0 = time.perf_counter()
        mask = body_outline(volume)
        figures["network"] = (time.perf_counter() - t0, meter.stage())
        figures["voxels_in_mask"] = int(mask.sum())
    else:
        model = load_package_model(REPO / "model_store" / "builtin" / "hn-oar")
        card = model.card
        if config.endswith("whole"):
            whole = card.inference.model_copy(update={"strategy": "whole_volume"})
            model.card = card = card.model_copy(update={"inference": whole})
        assert card.preprocessing is not None and card.architecture is not None
        t0 = time.perf_counter()
        prepared = preprocess(volume, card.preprocessing)
        figures["preprocess"] = (time.perf_counter() - t0, meter.stage())
        num_classes = card.architecture.num_classes
        precision: Precision = "fp32" if config.endswith("fp32") else "auto"
        predictor = Predictor.from_model(model, device=device, precision=precision)
        figures["weights"] = f"builtin {card.name} {card.version}"
        figures["precision"] = predictor.precision_name
        figures["strategy"] = card.inference.describe()
        figures["grid_zyx"] = list(prepared.array.shape)
        t0 = time.perf_counter()
        probs = predictor.predict_proba(prepared.array)
        figures["network"] = (time.perf_counter() - t0, meter.stage())
        # The synthetic phantom has no organs for the network to find; post-processing
        # is timed on organ-sized probability maps instead.
        probs = organ_like_probabilities(prepared.grid, num_classes)
        t0 = time.perf_counter()
        labels = list(range(1, num_classes))
        cleanups = {label: Cleanup(largest_component=True, fill_holes=True) for label in labels}
        masks = probabilities_to_masks(probs, prepared.grid, volume, labels, cleanups)
        figures["postprocess"] = (time.perf_counter() - t0, meter.stage())
        figures["voxels_in_masks"] = int(sum(int(m.sum()) for m in masks.values()))
    meter.stage()
    figures["total"] = (time.perf_counter() - total0, meter.overall)
    figures["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", default="body,hn-oar bf16,hn-oar bf16 whole,hn-oar fp32")
    parser.add_argument(
        "--body-mm",
        default="340x240",
        help="phantom width x depth in mm (340x240 torso, the default; 160x200 head)",
    )
    parser.add_argument(
        "--child", nargs=2, metavar=("SERIES_DIR", "CONFIG"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_config(Path(args.child[0]), args.child[1], args.threads, args.device)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        width_mm, depth_mm = (float(v) for v in args.body_mm.split("x"))
        write_ct(Path(tmp), args.slices, (width_mm, depth_mm))
        print(
            f"wrote 512 x 512 x {args.slices} CT (patient {width_mm:.0f} x {depth_mm:.0f} mm) "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        print(f"torch threads {args.threads}, device {args.device}")
        header = f"{'config':<19}{'stage':<13}{'time s':>8}{'peak RSS MB':>13}"
        print(header)
        for config in args.configs.split(","):
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--threads",
                    str(args.threads),
                    "--device",
                    args.device,
                    "--child",
                    tmp,
                    config,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode:
                print(f"{config}: failed\n{proc.stderr[-2000:]}")
                continue
            figures = json.loads(proc.stdout.strip().splitlines()[-1])
            for stage in ("load", "preprocess", "network", "postprocess", "total"):
                if stage in figures:
                    sec, rss = figures[stage]
                    print(f"{config:<19}{stage:<13}{sec:>8.2f}{rss / 2**20:>13.0f}")
            extra = {
                k: v
                for k, v in figures.items()
                if k not in ("load", "preprocess", "network", "postprocess", "total", "config")
            }
            extra["ru_maxrss_MB"] = round(int(extra.pop("ru_maxrss")) / 2**20)
            print(f"{config:<19}{json.dumps(extra)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
