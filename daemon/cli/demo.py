"""``contourd demo``: the whole product path on a throwaway data folder.

Starts a node (``contourd serve``) on a temporary data folder, a receiver
playing the planning system, generates a synthetic CT phantom (or takes the
user's series with ``--input``), approves the built-in models *in that
throwaway store only*, pushes the images by C-STORE, waits for the RTSTRUCT
and prints the stage timings and where the RTSTRUCT and the preview PNG are.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from contourd.errors import ContourdError
from daemon.config import DestinationConfig, DispatchConfig, load_config
from daemon.demo_receiver import DemoReceiver
from daemon.dispatch import send_cstore
from daemon.job_queue import SqliteJobQueue
from model_store.registry import ModelRegistry

DEMO_BY = "contourd-demo"
WAIT_FOR_RESULT_S = 900.0


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="contour a synthetic CT (or your series) end to end on a throwaway node",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="take the routing rules from this config (destinations become the demo receiver)",
    )
    parser.add_argument("--input", type=Path, default=None, help="a folder of DICOM series to push")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="folder for the demo (default: a new temp folder)",
    )
    parser.set_defaults(func=run)


def demo_rules(registry: ModelRegistry) -> list[dict[str, Any]]:
    """Default rules: H&N CT gets BODY + organs (when hn-oar exists), any CT gets BODY."""
    names = {m.name for m in registry.list_models()}
    rules: list[dict[str, Any]] = []
    if "hn-oar" in names:
        rules.append(
            {
                "name": "head and neck CT",
                "match": {"modality": "CT", "body_part": ["HEAD", "NECK", "HEADNECK"]},
                "model": ["body", "hn-oar"],
                "send_to": ["tps"],
                "complete_on": "association_release",
            }
        )
    rules.append(
        {
            "name": "body outline for every CT",
            "match": {"modality": "CT"},
            "model": "body",
            "send_to": ["tps"],
            "complete_on": "association_release",
        }
    )
    return rules


def _start_node(config_path: Path, log_path: Path) -> tuple[subprocess.Popen[str], int]:
    """Run ``contourd serve`` and return it with the port it bound."""
    log_file = log_path.open("w", encoding="utf-8")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon",
            "serve",
            "-c",
            str(config_path),
            "--port",
            "0",
            "--http-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
    )
    found: dict[str, int] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("contourd listening on port"):
                found["port"] = int(line.split()[-1])

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 120
    while "port" not in found:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise ContourdError(f"the demo node did not start; see its log {log_path}")
        time.sleep(0.1)
    return proc, found["port"]


def _series_files(folder: Path) -> list[Path]:
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and _is_dicom(p)]
    if not files:
        raise ContourdError(
            f"--input {folder}: no DICOM files found (files with 'DICM' at byte 128)"
        )
    return files


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every pushed series came back as an RTSTRUCT."""
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="contourd-demo-"))
    workdir = workdir.resolve()
    data_dir = workdir / "var"
    print(f"demo folder: {workdir}")
    receiver = DemoReceiver(workdir / "tps-received").start()
    print(f"planning-system stand-in: AE TPS on 127.0.0.1:{receiver.port}")

    with ModelRegistry(data_dir) as registry:
        rules = demo_rules(registry)
        if args.config is not None:
            user = load_config(args.config)
            rules = [
                r.model_dump(mode="json", by_alias=True, exclude_defaults=True) for r in user.rules
            ]
            for r in rules:
                r["send_to"] = ["tps"]
        for record in registry.list_models():
            if record.status != "approved":
                registry.approve(
                    record.name,
                    record.version,
                    by=DEMO_BY,
                    note="approved by `contourd demo` in its throwaway data folder",
                )
                print(
                    f"approved built-in model {record.name} {record.version} "
                    f"in the throwaway store {data_dir} only (your own stores are untouched)"
                )
    config = {
        "node": {
            "ae_title": "CONTOURD",
            "host": "127.0.0.1",
            "port": 0,
            "data_dir": str(data_dir),
            "min_free_disk_mb": 100,
        },
        "series": {"complete_after_s": 3},
        "destinations": {"tps": {"ae_title": "TPS", "host": "127.0.0.1", "port": receiver.port}},
        "retention": {"emergency_free_disk_mb": 50},
        "http": {"enabled": False},
        "rules": rules,
    }
    config_path = workdir / "contourd-demo.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    if args.input is not None:
        files = _series_files(args.input)
        print(f"pushing {len(files)} DICOM files from {args.input}")
    else:
        from inference.phantom import make_phantom_series

        phantom = make_phantom_series(
            workdir / "phantom-ct", shape_zyx=(60, 256, 256), spacing_mm=(1.5, 1.5, 2.5)
        )
        files = phantom.paths
        print(
            f"generated a synthetic CT phantom: {len(files)} slices 256x256 in {phantom.directory}"
        )

    node, port = _start_node(config_path, workdir / "contourd.log")
    print(f"contourd node: AE CONTOURD on 127.0.0.1:{port} (log {workdir / 'contourd.log'})")
    try:
        return _push_and_wait(files, port, receiver, data_dir)
    finally:
        node.terminate()
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            node.kill()
        receiver.stop()


def _push_and_wait(files: list[Path], port: int, receiver: DemoReceiver, data_dir: Path) -> int:
    node_dest = DestinationConfig(ae_title="CONTOURD", host="127.0.0.1", port=port)
    t0 = time.perf_counter()
    acked = send_cstore(files, node_dest, DispatchConfig(calling_ae_title="DEMO_CT"), name="node")
    t_acked = time.perf_counter()
    print(f"pushed {len(acked)} images by C-STORE in {t_acked - t0:.1f} s")
    deadline = time.monotonic() + WAIT_FOR_RESULT_S
    queue = SqliteJobQueue(data_dir)
    try:
        while time.monotonic() < deadline:
            jobs = queue.recent(50)
            rtstructs = receiver.files("RTSTRUCT")
            done = [j for j in jobs if j.finished]
            if jobs and len(done) == len(jobs) and (rtstructs or any(j.error for j in jobs)):
                break
            time.sleep(0.2)
        t_result = time.perf_counter()
        # The worker draws the preview right after the first send; give it a moment.
        preview_deadline = time.monotonic() + 60
        while time.monotonic() < preview_deadline and any(
            j.preview_file is None and not j.error for j in queue.recent(50)
        ):
            time.sleep(0.2)
        return _report(queue, receiver, t_result - t_acked)
    finally:
        queue.close()


def _report(queue: SqliteJobQueue, receiver: DemoReceiver, latency_s: float) -> int:
    from daemon.cli.jobs import job_summary

    jobs = queue.recent(50)
    rtstructs = receiver.files("RTSTRUCT")
    if not jobs:
        print("no job was created: see the node log")
        return 1
    ok = True
    for job in jobs:
        summary = job_summary(queue, job)
        models = summary["models"]
        print(f"\njob {job.id}: {summary['state']}  rule {summary['rule']!r}  models {models}")
        for stage, seconds in summary["stage_s"].items():
            print(f"  {stage:<12} {seconds:8.2f} s")
        for stage, seconds in summary["timings_s"].items():
            print(f"    {stage:<18} {seconds:8.2f} s")
        for warning in summary["warnings"] or []:
            print(f"  warning: {warning}")
        if summary["error"]:
            print(f"  error: {summary['error']}")
            ok = False
        if summary["preview_file"]:
            print(f"  preview PNG: {summary['preview_file']}")
    print(f"\nlast image acknowledged -> RTSTRUCT at the planning system: {latency_s:.1f} s")
    for path in rtstructs:
        print(f"RTSTRUCT received by the TPS stand-in: {path}")
    if not rtstructs:
        print("no RTSTRUCT arrived")
        return 1
    return 0 if ok else 1
