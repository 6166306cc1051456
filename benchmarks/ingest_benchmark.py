"""Ingest benchmark: DCMTK storescu pushes one CT series into several receivers.

Run from the repository root::

    python benchmarks/ingest_benchmark.py [--slices 300] [--size 512] [--repeats 3]

A synthetic CT series (int16, ``--size`` x ``--size`` pixels, ``--slices``
slices, Explicit VR Little Endian) is written to a temp folder, then pushed in
one association by DCMTK ``storescu`` into, in the same run:

- ``contourd serve`` with ``node.fsync: true`` (every file and folder fsynced
  before the C-STORE is acknowledged, one SQLite row per instance);
- ``contourd serve`` with ``node.fsync: false``;
- DCMTK ``storescp`` (writes files, no fsync);
- ``python -m pynetdicom storescp`` (decodes and writes each data set, no fsync).

Both DCMTK processes run with ``TCP_NODELAY=1`` (without it DCMTK is ~30x
slower on loopback). The time of a push is storescu's wall time from start to
exit (association set-up and release included). Prints images/s and MB/s per
receiver (median of ``--repeats`` pushes) and the ratios to pynetdicom's
storescp and to DCMTK's storescp.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A loopback TCP port that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_series(folder: Path, num_slices: int, size_px: int) -> list[Path]:
    """Write a synthetic axial CT series; return paths in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    base = rng.integers(-1000, 1500, size=(size_px, size_px), dtype=np.int16)
    paths = []
    for index in range(num_slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName, ds.PatientID = "BENCHMARK^SYNTHETIC", "BENCH0001"
        ds.Modality, ds.BodyPartExamined = "CT", "HEADNECK"
        ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
        ds.ImagePositionPatient = [-250.0, -250.0, index * 2.0]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.98, 0.98], 2.0
        ds.Rows = ds.Columns = size_px
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.roll(base, index, axis=0).tobytes()
        path = folder / f"ct_{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK processes."""
    return dict(os.environ, TCP_NODELAY="1")


def wait_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    """Wait until something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s} s")


@dataclass
class Receiver:
    """A receiver to start: name, command factory, environment, called AE title."""

    name: str
    command: Callable[[int, Path], list[str]]
    env: dict[str, str]
    called_ae: str


def contourd_command(fsync: bool) -> Callable[[int, Path], list[str]]:
    """``contourd serve`` with a config in ``out_dir``."""

    def command(port: int, out_dir: Path) -> list[str]:
        config = {
            "node": {
                "host": "127.0.0.1",
                "port": port,
                "data_dir": str(out_dir / "var"),
                "fsync": fsync,
                "min_free_disk_mb": 0,
            },
            "series": {"complete_after_s": 600},
        }
        path = out_dir / "contourd.yaml"
        path.write_text(yaml.safe_dump(config))
        return [sys.executable, "-m", "daemon", "serve", "-c", str(path)]

    return command


RECEIVERS = [
    Receiver("contourd (fsync on)", contourd_command(True), dict(os.environ), "CONTOURD"),
    Receiver("contourd (fsync off)", contourd_command(False), dict(os.environ), "CONTOURD"),
    Receiver(
        "DCMTK storescp",
        lambda port, out: ["storescp", "-od", str(out), str(port)],
        dcmtk_env(),
        "STORESCP",
    ),
    Receiver(
        "pynetdicom storescp",
        lambda port, out: [
            sys.executable,
            "-m",
            "pynetdicom",
            "storescp",
            "-od",
            str(out),
            str(port),
        ],
        dict(os.environ),
        "STORESCP",
    ),
]


def push_once(receiver: Receiver, files: list[Path], work: Path) -> float:
    """Start the receiver, push ``files`` with storescu, return the push time in s."""
    out_dir = Path(tempfile.mkdtemp(dir=work, prefix="recv-"))
    port = free_port()
    log = open(out_dir / "receiver.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        receiver.command(port, out_dir), stdout=log, stderr=subprocess.STDOUT,
        env=receiver.env, cwd=REPO_ROOT,
    )  # fmt: skip
    try:
        wait_port(port, 60, proc)
        started_s = time.perf_counter()
        result = subprocess.run(
            ["storescu", "-aec", receiver.called_ae, "127.0.0.1", str(port)]
            + [str(p) for p in files],
            capture_output=True, text=True, env=dcmtk_env(), check=False,
        )  # fmt: skip
        elapsed_s = time.perf_counter() - started_s
        if result.returncode != 0:
            raise RuntimeError(f"storescu into {receiver.name} failed: {result.stderr[-2000:]}")
        spool = out_dir / "var" / "spool"
        if spool.is_dir():  # contourd: only the spool holds instances
            stored = list(spool.rglob("*.dcm"))
        else:
            stored = [p for p in out_dir.rglob("*") if p.is_file() and p.name != "receiver.log"]
        if len(stored) < len(files):
            raise RuntimeError(f"{receiver.name} stored {len(stored)} of {len(files)} files")
        return elapsed_s
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(out_dir, ignore_errors=True)


def fsync_latency_ms(folder: Path, size_bytes: int, repeats: int = 20) -> float:
    """Median time to write, rename and fsync one file of ``size_bytes`` in ``folder``."""
    payload = os.urandom(size_bytes)
    times = []
    for index in range(repeats):
        temp, final = folder / f".probe{index}.tmp", folder / f"probe{index}.dcm"
        started_s = time.perf_counter()
        with open(temp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.replace(temp, final)
            os.fsync(handle.fileno())
        times.append(time.perf_counter() - started_s)
        final.unlink()
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows = columns, in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"needs dcmtk ({tool}): apt-get install dcmtk", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="contourd-ingest-") as tmp:
        work = Path(tmp)
        files = make_series(work / "series", args.slices, args.size)
        total_mb = sum(p.stat().st_size for p in files) / 1e6
        print(
            f"series: {args.slices} slices of {args.size}x{args.size} int16 CT, "
            f"{total_mb:.1f} MB, Explicit VR Little Endian; {args.repeats} pushes per receiver "
            f"(median); storescu and storescp with TCP_NODELAY=1; {os.cpu_count()} CPUs"
        )
        probe_ms = fsync_latency_ms(work, files[0].stat().st_size)
        print(
            f"disk: write + rename + fsync of one {files[0].stat().st_size / 1e3:.0f} kB file "
            f"takes {probe_ms:.1f} ms (median): a durable receiver answering one association "
            f"serially cannot exceed ~{1e3 / probe_ms:.0f} images/s here"
        )
        results: dict[str, float] = {}
        for receiver in RECEIVERS:
            times = [push_once(receiver, files, work) for _ in range(args.repeats)]
            results[receiver.name] = statistics.median(times)
            print(
                f"  {receiver.name:<22} {args.slices / results[receiver.name]:7.1f} images/s  "
                f"{total_mb / results[receiver.name]:6.1f} MB/s  "
                f"(pushes: {', '.join(f'{t:.2f}' for t in times)} s)",
                flush=True,
            )
    rate = {name: args.slices / t for name, t in results.items()}
    print("ratios (images/s over images/s):")
    for name in ("contourd (fsync on)", "contourd (fsync off)"):
        print(
            f"  {name:<22} x{rate[name] / rate['pynetdicom storescp']:.2f} pynetdicom storescp, "
            f"x{rate[name] / rate['DCMTK storescp']:.2f} DCMTK storescp"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
