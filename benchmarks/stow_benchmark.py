"""STOW-RS ingest benchmark: one CT series by DICOMweb into contourd and into Orthanc.

Run from the repository root::

    python benchmarks/stow_benchmark.py [--slices 100] [--size 512] [--repeats 3]

A synthetic CT series (``ingest_benchmark.make_series``) is read once into
memory, then stored, in the same run, into:

- ``contourd serve`` by STOW-RS (``POST /dicomweb/studies``, dicomweb-client,
  HTTP Basic as an operator), ``node.fsync: true``: every instance fsynced and
  its row written before the answer;
- Orthanc with its DICOMweb plugin (Debian ``orthanc`` + ``orthanc-dicomweb``)
  by STOW-RS, the named peer;
- ``contourd serve`` by C-STORE (DCMTK ``storescu``, ``TCP_NODELAY=1``), for
  the comparison with the DIMSE path.

The time of a store is the wall time of the ``store_instances`` call (the
client encodes the data sets, so both STOW receivers pay the same client
cost) or of storescu from start to exit. Prints images/s and MB/s per
receiver (median of ``--repeats`` stores, each into a fresh receiver) and the
ratio to Orthanc.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import yaml
from ingest_benchmark import REPO_ROOT, dcmtk_env, free_port, make_series, wait_port

PASSWORD = "benchmark password"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode} before answering {url}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} does not answer after {timeout_s} s")


@contextmanager
def contourd_node(work: Path) -> Iterator[tuple[int, int, Path]]:
    """``contourd serve`` (fsync on): (DICOM port, HTTP port, spool folder)."""
    out = Path(tempfile.mkdtemp(dir=work, prefix="contourd-"))
    port, http_port = free_port(), free_port()
    config = {
        "node": {"host": "127.0.0.1", "port": port, "data_dir": str(out / "var"),
                 "fsync": True, "min_free_disk_mb": 0},
        "series": {"complete_after_s": 600},
        "http": {"port": http_port},
    }  # fmt: skip
    path = out / "contourd.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run(
        [sys.executable, "-m", "daemon", "users", "add", "bench", "--role", "operator",
         "--password-stdin", "--by", "benchmark", "-c", str(path)],
        input=PASSWORD + "\n", text=True, check=True, capture_output=True, cwd=REPO_ROOT,
    )  # fmt: skip
    log = open(out / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "serve", "-c", str(path)],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
    )  # fmt: skip
    try:
        wait_port(port, 60, proc)
        _wait_http(f"http://127.0.0.1:{http_port}/healthz", 60, proc)
        yield port, http_port, out / "var" / "spool"
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(out, ignore_errors=True)


@contextmanager
def orthanc_dicomweb(work: Path) -> Iterator[int]:
    """Orthanc with the DICOMweb plugin at ``/dicom-web``: its HTTP port."""
    out = Path(tempfile.mkdtemp(dir=work, prefix="orthanc-"))
    http_port = free_port()
    config = {
        "Name": "stow-benchmark", "StorageDirectory": str(out / "storage"),
        "IndexDirectory": str(out / "index"), "DicomPort": free_port(), "HttpPort": http_port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }  # fmt: skip
    (out / "orthanc.json").write_text(json.dumps(config))
    log = open(out / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["Orthanc", str(out / "orthanc.json")], stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{http_port}/system", 60, proc)
        yield http_port
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(out, ignore_errors=True)


def stow(url: str, datasets: list[pydicom.Dataset], auth: tuple[str, str] | None) -> float:
    """Store ``datasets`` in one ``store_instances`` call; return its wall time in s."""
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session, create_session_from_user_pass

    session = create_session_from_user_pass(*auth) if auth else create_session()
    client = DICOMwebClient(url=url, session=session)
    started_s = time.perf_counter()
    answer = client.store_instances(datasets)
    elapsed_s = time.perf_counter() - started_s
    stored = len(answer.get("ReferencedSOPSequence", []))
    if stored != len(datasets):
        raise RuntimeError(f"{url} stored {stored} of {len(datasets)} instances")
    return elapsed_s


def contourd_stow(work: Path, files: list[Path], datasets: list[pydicom.Dataset]) -> float:
    with contourd_node(work) as (_port, http_port, spool):
        elapsed_s = stow(f"http://127.0.0.1:{http_port}/dicomweb", datasets, ("bench", PASSWORD))
        if len(list(spool.rglob("*.dcm"))) != len(datasets):
            raise RuntimeError("contourd's spool does not hold every instance")
        return elapsed_s


def orthanc_stow(work: Path, files: list[Path], datasets: list[pydicom.Dataset]) -> float:
    with orthanc_dicomweb(work) as http_port:
        return stow(f"http://127.0.0.1:{http_port}/dicom-web", datasets, None)


def contourd_cstore(work: Path, files: list[Path], datasets: list[pydicom.Dataset]) -> float:
    with contourd_node(work) as (port, _http_port, _spool):
        started_s = time.perf_counter()
        subprocess.run(
            ["storescu", "-aec", "CONTOURD", "127.0.0.1", str(port), *map(str, files)],
            capture_output=True, env=dcmtk_env(), check=True,
        )  # fmt: skip
        return time.perf_counter() - started_s


RUNS: list[tuple[str, Callable[[Path, list[Path], list[pydicom.Dataset]], float]]] = [
    ("contourd STOW-RS (fsync on)", contourd_stow),
    ("Orthanc DICOMweb STOW-RS", orthanc_stow),
    ("contourd C-STORE storescu (fsync on)", contourd_cstore),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    for tool in ("storescu", "Orthanc"):
        if shutil.which(tool) is None:
            print(f"{tool} missing: apt-get install dcmtk orthanc orthanc-dicomweb")
            return 2
    if not DICOMWEB_PLUGIN.exists():
        print(f"{DICOMWEB_PLUGIN} missing: apt-get install orthanc-dicomweb")
        return 2
    work = Path(tempfile.mkdtemp(prefix="contourd-stow-bench-"))
    try:
        files = make_series(work / "series", args.slices, args.size)
        datasets = [pydicom.dcmread(p) for p in files]
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        print(
            f"series: {len(files)} images of {args.size}x{args.size}, {megabytes:.1f} MB; "
            f"median of {args.repeats}; cpu count {os.cpu_count()}"
        )
        medians: dict[str, float] = {}
        for name, run in RUNS:
            times = [run(work, files, datasets) for _ in range(args.repeats)]
            medians[name] = statistics.median(times)
        peer = medians["Orthanc DICOMweb STOW-RS"]
        for name, seconds in medians.items():
            print(
                f"{name:<40} {len(files) / seconds:8.1f} images/s {megabytes / seconds:7.1f} MB/s"
                f"  x{peer / seconds:.2f} vs Orthanc STOW-RS"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
