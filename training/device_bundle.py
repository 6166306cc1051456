"""A training run packed for a GPU machine that has torch but not our other libraries.

The GPU machines lent to this project (see docs/training.md, "Training on a
GPU") run a stock CUDA image: torch, numpy, safetensors, PyYAML, tqdm and
matplotlib are there, but not SimpleITK, pydicom or pydantic, and nothing can
be downloaded there. So the run's cases are preprocessed here, exactly as the
trainer would load them (resampled to the run's ``spacing_mm``, the seeded
train/validation split of the config), and written as one compressed npz;
pydantic goes along as wheels. On the GPU machine ``training/device/train.sh``
installs the wheels, trains with ``python -m training.trainer --cases`` and
copies the weights back.

HU are clipped to the run's ``[min_hu, max_hu]`` before compression (the
network sees them clipped anyway), which keeps the 170 OpenKBP cases near
50 MB, under the 64 MiB a device call may carry.

Usage (on this machine, then on the device machine)::

    python -m training.device_bundle --config training/configs/hn-oar-2.0-gpu.yaml
    bash training/device/train.sh          # run there, with var/device carried
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np

from contourd.errors import TrainingError, cli_error_exit
from training.openkbp_dataset import TrainingCase

log = logging.getLogger(__name__)

DEFAULT_BUNDLE_DIR = Path("var/device")
CASES_FILE = "cases.npz"
#: Python packages the trainer needs that the GPU image lacks (Python 3.12, x86-64).
DEVICE_WHEELS = ["pydantic>=2.6,<3"]
DEVICE_PYTHON = "3.12"


def write_cases(
    path: Path, train: list[TrainingCase], val: list[TrainingCase], clip_hu: tuple[float, float]
) -> None:
    """Write the split cases to one compressed npz (HU clipped to ``clip_hu``).

    Keys: ``train_ids``, ``val_ids``, and per case ``img_<id>`` (int16 HU
    ``[z, y, x]``), ``lab_<id>`` (uint8 labels) and ``known_<id>`` (bool per class).
    """
    low, high = clip_hu
    arrays: dict[str, np.ndarray] = {
        "train_ids": np.array([c.case_id for c in train]),
        "val_ids": np.array([c.case_id for c in val]),
    }
    for case in train + val:
        arrays[f"img_{case.case_id}"] = np.clip(case.image_hu, low, high).astype(np.int16)
        arrays[f"lab_{case.case_id}"] = case.labels
        arrays[f"known_{case.case_id}"] = case.known
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)


def read_cases(path: Path) -> tuple[list[TrainingCase], list[TrainingCase]]:
    """(train, validation) cases from a bundle written by :func:`write_cases`.

    Raises
    ------
    TrainingError
        When the file is missing or is not such a bundle.
    """
    if not path.is_file():
        raise TrainingError(
            f"case bundle {path} does not exist; make it with "
            "python -m training.device_bundle --config CONFIG"
        )
    with np.load(path) as data:
        if "train_ids" not in data or "val_ids" not in data:
            raise TrainingError(
                f"{path} is not a case bundle (no train_ids/val_ids); make it with "
                "python -m training.device_bundle"
            )

        def cases(key: str) -> list[TrainingCase]:
            return [
                TrainingCase(cid, data[f"img_{cid}"], data[f"lab_{cid}"], data[f"known_{cid}"])
                for cid in (str(x) for x in data[key])
            ]

        return cases("train_ids"), cases("val_ids")


def download_wheels(wheel_dir: Path) -> None:
    """Fetch the wheels the GPU image lacks, for its Python, into ``wheel_dir``."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
        "--python-version", DEVICE_PYTHON, "--platform", "manylinux2014_x86_64",
        "--implementation", "cp", "-d", str(wheel_dir), *DEVICE_WHEELS,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise TrainingError(
            f"pip download of {', '.join(DEVICE_WHEELS)} failed ({result.stderr.strip()[-300:]}); "
            "the bundle needs PyPI once, on this machine"
        )


def main(argv: list[str] | None = None) -> int:
    from training.config import load_training_config
    from training.datasets import load_training_data

    parser = argparse.ArgumentParser(description="Pack a training run for a GPU machine.")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=DEFAULT_BUNDLE_DIR)
    parser.add_argument("--limit", type=int, default=None, help="only N training cases")
    parser.add_argument("--no-wheels", action="store_true", help="skip the pydantic wheels")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = load_training_config(args.config)
    train, val = load_training_data(config, limit=args.limit)
    out = args.out / CASES_FILE
    write_cases(out, train, val, (config.min_hu, config.max_hu))
    if not args.no_wheels:
        download_wheels(args.out / "wheels")
    size_mb = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 1e6
    print(f"{out}: {len(train)} training and {len(val)} validation cases; bundle {size_mb:.1f} MB")
    return 0


if __name__ == "__main__":  # errors end as one line, as in `contourd`
    raise SystemExit(cli_error_exit("training.device_bundle", main))
