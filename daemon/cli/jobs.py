"""``contourd jobs``: recent jobs, or one job in detail (``--json`` for scripts)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from daemon.config import load_config
from daemon.job_queue import Job, SqliteJobQueue, stage_durations_s, utc_iso


def register(subparsers: Any) -> None:
    """Add the ``jobs`` subcommand."""
    parser = subparsers.add_parser(
        "jobs",
        help="list recent jobs (state, rule, model, timings, warnings)",
        description=(
            "List recent jobs, newest first, or show one job with its state history "
            "and deliveries. No patient identifiers are shown."
        ),
    )
    parser.add_argument("-c", "--config", type=Path, default=None, help="config YAML file")
    parser.add_argument("job_id", nargs="?", type=int, help="show this job in detail")
    parser.add_argument("-n", "--limit", type=int, default=20, help="how many jobs (default 20)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def job_summary(queue: SqliteJobQueue, job: Job) -> dict[str, Any]:
    """JSON-friendly summary of one job (UIDs, no patient identifiers)."""
    return {
        "id": job.id,
        "state": job.state.value,
        "series_uid": job.series_uid,
        "version": job.version,
        "series_description": job.series_description,
        "modality": job.modality,
        "num_instances": job.num_instances,
        "calling_ae": job.calling_ae,
        "rule": job.rule,
        "models": job.models,
        "destinations": job.destinations,
        "shadow": job.shadow,
        "attempts": job.attempts,
        "stage_s": {k: round(v, 3) for k, v in stage_durations_s(queue.events(job.id)).items()},
        "timings_s": {k: round(v, 3) for k, v in job.timings_s.items()},
        "warnings": job.warnings,
        "error": job.error,
        "created_at": utc_iso(job.created_at),
        "not_before": utc_iso(job.not_before) if job.not_before else None,
        "result_files": [str(p) for p in job.result_files],
        "preview_file": str(job.preview_file) if job.preview_file else None,
    }


def job_detail(queue: SqliteJobQueue, job: Job) -> dict[str, Any]:
    """Summary plus events and deliveries."""
    out = job_summary(queue, job)
    out["events"] = [
        {"state": e.state, "at": utc_iso(e.at), "worker": e.worker, "message": e.message}
        for e in queue.events(job.id)
    ]
    out["deliveries"] = [
        {
            "destination": d.destination,
            "state": d.state.value,
            "attempts": d.attempts,
            "last_error": d.last_error,
            "sent_at": utc_iso(d.sent_at) if d.sent_at else None,
            "sop_instance_uids": d.sent_sop_instance_uids,
        }
        for d in queue.deliveries(job.id)
    ]
    return out


def _stages(stage_s: dict[str, float]) -> str:
    order = ("queued", "waiting", "processing", "sending", "total")
    return " ".join(f"{k[0]}={stage_s[k]:.1f}" for k in order if k in stage_s) or "-"


def run(args: argparse.Namespace) -> int:
    """Print the jobs; return 0."""
    config = load_config(args.config)
    queue = SqliteJobQueue(config.data_dir, database=config.open_database())
    if args.job_id is not None:
        detail = job_detail(queue, queue.get(args.job_id))
        if args.json:
            print(json.dumps(detail, indent=2))
            return 0
        for key, value in detail.items():
            if key in ("events", "deliveries"):
                continue
            print(f"{key:>18}: {value}")
        print("            events:")
        for e in detail["events"]:
            print(f"  {e['at']}  {e['state']:<20} {e['worker'] or '':<20} {e['message'] or ''}")
        print("        deliveries:")
        for d in detail["deliveries"]:
            print(
                f"  {d['destination']:<16} {d['state']:<8} attempts={d['attempts']} "
                f"{d['last_error'] or ''}"
            )
        return 0
    summaries = [job_summary(queue, j) for j in queue.recent(args.limit)]
    if args.json:
        print(json.dumps(summaries, indent=2))
        return 0
    print(
        f"{'ID':>5} {'STATE':<11} {'SERIES':<24} {'RULE':<14} {'MODEL':<18} {'STAGES (s)':<32} WARN"
    )
    for s in summaries:
        print(
            f"{s['id']:>5} {s['state']:<11} {(s['series_description'] or '-')[:24]:<24} "
            f"{(s['rule'] or '-')[:14]:<14} {(', '.join(s['models']) or '-')[:18]:<18} "
            f"{_stages(s['stage_s'])[:32]:<32} {len(s['warnings'])}"
        )
        if s["error"]:
            print(f"      error: {s['error']}")
    return 0
