"""``contourd feedback --report DIR``: an HTML page with the feedback over time.

One PNG per (model version, ROI) with Dice, surface Dice and added path
length of every reviewed set against the time it was recorded (so drift is
seen), the summary table, and the worst cases (lowest Dice, then largest
added path length). Only UIDs, AE titles and job ids appear; no patient
identifiers are stored in the first place.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon.feedback_store import FeedbackStore

WORST_CASES = 20


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "roi"


def _plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    when = [datetime.fromtimestamp(float(r["recorded_at"]), UTC) for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
    top.plot(when, [r["dice"] for r in rows], "o-", label="Dice")
    top.plot(when, [r["surface_dice"] for r in rows], "s--", label="surface Dice")
    top.set_ylim(-0.05, 1.05)
    top.set_ylabel("sent vs approved")
    top.legend(loc="lower left", fontsize=8)
    bottom.plot(when, [r["added_path_length_mm"] for r in rows], "o-", color="tab:red")
    bottom.set_ylabel("added path (mm)")
    fig.suptitle(title, fontsize=10)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape("-" if value is None else str(value))


def write_report(
    store: FeedbackStore, out_dir: Path, *, model: str | None = None, since: float | None = None
) -> Path:
    """Write ``index.html`` and one PNG per ROI into ``out_dir``; return the index path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = store.roi_rows(model=model, since=since)
    groups: dict[tuple[str, str, str, bool], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["model"], row["model_version"], row["roi"], bool(row["shadow"]))
        groups.setdefault(key, []).append(row)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>contourd feedback</title>",
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right}</style>",
        "</head><body><h1>contourd feedback: clinicians' edits of the automatic contours</h1>",
        f"<p>{len(rows)} ROI comparison(s); generated "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Dice, surface Dice and HD95 compare the "
        "sent ROI with the approved one; the added path length is what the clinician drew.</p>",
        "<h2>Summary (medians)</h2><table><tr><th>model</th><th>ROI</th><th>sets</th>"
        "<th>unchanged</th><th>edited</th><th>deleted</th><th>added</th><th>Dice</th>"
        "<th>surface Dice</th><th>HD95 mm</th><th>added path mm</th><th>volume change %</th>"
        "</tr>",
    ]
    for s in store.summary(model=model, since=since):
        m = s.medians
        name = f"{s.model} {s.model_version}" + (" (shadow)" if s.shadow else "")
        cells = [name, s.roi, s.sets, *s.counts.values()]
        cells += [m[k] for k in ("dice", "surface_dice", "hd95_mm", "added_path_length_mm")]
        cells.append(m["volume_change_pct"])
        parts.append("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>")
    parts.append("</table><h2>Over time, per ROI</h2>")
    for (name, version, roi, shadow), group in sorted(groups.items()):
        title = f"{name} {version}{' shadow' if shadow else ''}: {roi}"
        png = f"{_slug(title)}.png"
        _plot(group, title, out_dir / png)
        parts.append(f"<h3>{html.escape(title)}</h3><img src='{png}' alt='{html.escape(title)}'>")
    worst = sorted(
        (r for r in rows if r["classification"] != "added"),
        key=lambda r: (r["dice"], -r["added_path_length_mm"]),
    )[:WORST_CASES]
    parts.append(
        f"<h2>Worst cases (lowest Dice, {WORST_CASES} at most)</h2><table><tr><th>recorded</th>"
        "<th>job</th><th>model</th><th>ROI</th><th>classification</th><th>Dice</th>"
        "<th>surface Dice</th><th>HD95 mm</th><th>added path mm</th></tr>"
    )
    for r in worst:
        cells = [
            r["recorded_at_utc"],
            r["job_id"],
            f"{r['model']} {r['model_version']}",
            r["roi"],
            r["classification"],
            r["dice"],
            r["surface_dice"],
            r["hd95_mm"],
            r["added_path_length_mm"],
        ]
        parts.append("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>")
    parts.append("</table></body></html>")
    index = out_dir / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index
