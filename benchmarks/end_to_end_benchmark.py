"""End-to-end latency: last image acknowledged -> RTSTRUCT stored at the TPS.

Runs a real node (``contourd serve`` in a subprocess, one worker process),
pushes a synthetic 512x512xN CT with DCMTK ``storescu`` (series completed on
association release), and lets DCMTK ``storescp`` play the planning system.
For each model (the classical ``body`` model and, when it is registered in
this build, the ``hn-oar`` U-Net) it reports the median over several runs of:

- ``latency``: from storescu's exit (every image acknowledged, association
  released) to the job's ``sent`` event (the TPS acknowledged the RTSTRUCT);
- the stages from the job's events (queued, waiting, processing, sending);
- the push itself (storescu transfer time of the same series), the peer we
  measure in the same run, to put the figure next to the cost of just moving
  the images.

Published figures for context (not measured here): RaySearch promises
"under a minute"; TotalSegmentator's fast mode takes about a minute on a
desktop CPU. Our goal: under 10 s on a 2-core machine.

Usage::

    python benchmarks/end_to_end_benchmark.py --runs 3 --slices 200
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.job_queue import SqliteJobQueue, stage_durations_s  # noqa: E402
from inference.phantom import write_ct_series  # noqa: E402
from model_store.registry import ModelRegistry  # noqa: E402


def make_ct(out_dir: Path, slices: int, size: int = 512) -> list[Path]:
    """A body-like CT (ellipse of soft tissue with a spine, a couch below), HU int16."""
    spacing = (500.0 / size, 500.0 / size, 2.5)
    r, c = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size * 0.45, size * 0.5
    plane = np.full((size, size), -1000, dtype=np.int16)
    body = ((c - cx) / (size * 0.36)) ** 2 + ((r - cy) / (size * 0.25)) ** 2 <= 1
    plane[body] = 40
    spine = ((c - cx) / (size * 0.03)) ** 2 + ((r - cy - size * 0.15) / (size * 0.03)) ** 2 <= 1
    plane[spine] = 700
    plane[int(size * 0.78) : int(size * 0.8), int(size * 0.1) : int(size * 0.9)] = 200  # couch
    volume = np.repeat(plane[None], slices, axis=0)
    affine = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [-250.0, -250.0, -slices * spacing[2] / 2]
    return write_ct_series(out_dir, volume, affine).paths


def run_model(model: str, ct: list[Path], runs: int, work: Path) -> dict[str, object]:
    """Start a node routing CT to ``model``; push ``ct`` ``runs`` times; collect timings."""
    data = work / f"data-{model}"
    out = work / f"tps-{model}"
    out.mkdir(parents=True)
    registry = ModelRegistry(data)
    versions = [m for m in registry.list_models() if m.name == model]
    if not versions:
        registry.close()
        return {"model": model, "skipped": f"model {model!r} is not registered in this build"}
    registry.approve(model, versions[-1].version, by="benchmark", note="throwaway data folder")
    registry.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        tps_port = s.getsockname()[1]
    config = work / f"contourd-{model}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "node": {"data_dir": str(data), "fsync": True},
                "series": {"complete_on": "association_release"},
                "destinations": {"tps": {"ae_title": "TPS", "host": "127.0.0.1", "port": tps_port}},
                "worker": {"processes": 1, "poll_interval_s": 0.05},
                "dispatch": {"poll_interval_s": 0.2},
                "http": {"enabled": False},
                "rules": [
                    {
                        "name": "bench",
                        "match": {"modality": "CT"},
                        "model": model,
                        "send_to": ["tps"],
                    }
                ],
            }
        )
    )
    scp = subprocess.Popen(
        ["storescp", "-aet", "TPS", "-od", str(out), "+uf", str(tps_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = open(work / f"serve-{model}.log", "w")  # noqa: SIM115
    node = subprocess.Popen(
        [sys.executable, "-m", "daemon", "serve", "-c", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert node.stdout is not None
    port = 0
    while not port:
        line = node.stdout.readline()
        if not line:
            raise SystemExit(f"contourd serve exited; see {log.name}")
        if line.startswith("contourd listening on port"):
            port = int(line.split()[-1])
    queue = SqliteJobQueue(data)
    latencies, pushes, stages = [], [], []
    try:
        for run in range(runs):
            before = {j.id for j in queue.recent(1000)}
            t0 = time.time()
            subprocess.run(
                [
                    "storescu",
                    "-aet",
                    "CT1",
                    "-aec",
                    "CONTOURD",
                    "127.0.0.1",
                    str(port),
                    *map(str, ct),
                ],
                check=True,
            )
            acked = time.time()
            deadline = acked + 600
            job = None
            while time.time() < deadline:
                new = [j for j in queue.recent(10) if j.id not in before]
                if new and new[0].finished:
                    job = new[0]
                    break
                time.sleep(0.02)
            if job is None or job.state.value != "sent":
                raise SystemExit(f"run {run}: job did not reach 'sent' ({job and job.error})")
            events = queue.events(job.id)
            sent_at = next(e.at for e in reversed(events) if e.state == "sent")
            latencies.append(sent_at - acked)
            pushes.append(acked - t0)
            stages.append(
                stage_durations_s(events) | {f"infer.{k}": v for k, v in job.timings_s.items()}
            )
            print(
                f"  {model} run {run + 1}: latency {latencies[-1]:.2f} s, push {pushes[-1]:.2f} s"
            )
    finally:
        node.terminate()
        node.wait(timeout=120)
        scp.terminate()
        scp.wait()
        log.close()
    keys = sorted({k for s in stages for k in s})
    return {
        "model": model,
        "runs": runs,
        "latency_median_s": statistics.median(latencies),
        "latency_all_s": [round(x, 2) for x in latencies],
        "storescu_push_median_s": statistics.median(pushes),
        "stage_median_s": {
            k: round(statistics.median(s[k] for s in stages if k in s), 3) for k in keys
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--models", nargs="+", default=["body", "hn-oar"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs dcmtk: apt-get install dcmtk ({tool} missing)")
    with tempfile.TemporaryDirectory(prefix="contourd-e2e-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        ct = make_ct(work / "ct", args.slices)
        print(f"CT 512x512x{args.slices} written in {time.perf_counter() - t0:.1f} s")
        results = [run_model(m, ct, args.runs, work) for m in args.models]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"\nEnd-to-end latency, last image acked -> RTSTRUCT stored (median of {args.runs})")
    print("goal < 10 s; RaySearch promises < 60 s; TotalSegmentator fast ~60 s on a desktop CPU")
    for r in results:
        if "skipped" in r:
            print(f"  {r['model']:<8} skipped: {r['skipped']}")
            continue
        print(
            f"  {r['model']:<8} {r['latency_median_s']:6.2f} s  (runs {r['latency_all_s']}; "
            f"storescu push of the same series {r['storescu_push_median_s']:.2f} s)"
        )
        print(f"           stages: {r['stage_median_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
