"""Restart safety: SIGKILL mid-push, unsent completions, temp files, lost rows,
and a full disk answered with 0xA700."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from peer_tools import acknowledged, push_and_act_after
from pydicom import dcmread
from receive_helpers import (
    free_port,
    make_ct_series,
    pixel_bytes,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.interop

RUNNER = Path(__file__).resolve().parent / "node_runner.py"


class RunnerProcess:
    """``node_runner.py`` in a subprocess, its output in ``log_path``."""

    def __init__(self, config_path: Path, completions: Path, log_path: Path, **popen) -> None:
        self.log_path = log_path
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(RUNNER), str(config_path), str(completions)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            **popen,
        )
        wait_for(
            lambda: "listening on port" in log_path.read_text() or self.proc.poll() is not None,
            30,
            "node runner start",
        )
        assert self.proc.poll() is None, log_path.read_text()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def _write_config(tmp_path: Path, port: int, **series) -> Path:
    config = {
        "node": {
            "host": "127.0.0.1",
            "port": port,
            "data_dir": str(tmp_path / "var"),
            "min_free_disk_mb": 0,
        },
        "series": {"complete_after_s": 1.5, **series},
    }
    path = tmp_path / "contourd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _completion_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stored(data_dir: Path, source: Path) -> Path:
    ds = dcmread(source, stop_before_pixels=True)
    return (
        data_dir / "spool" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    )


@pytest.mark.slow
def test_sigkill_mid_push_keeps_every_acknowledged_instance_and_completes_once(tmp_path):
    files = make_ct_series(tmp_path / "in", 150, rows=128, columns=128)
    port = free_port()
    config = _write_config(tmp_path, port, incomplete_wait_s=3.0)
    completions = tmp_path / "completions.jsonl"
    runner = RunnerProcess(config, completions, tmp_path / "node1.log")
    push, lines = push_and_act_after(port, files, 20, lambda _push: runner.kill())
    acked = acknowledged(lines)
    assert 20 <= acked < len(files), "".join(lines)
    assert push.returncode != 0  # the sender saw the node die

    data_dir = tmp_path / "var"
    runner = RunnerProcess(config, completions, tmp_path / "node2.log")
    try:
        done = wait_for(lambda: _completion_lines(completions), 20, "completion after restart")
        assert not list((data_dir / "spool").rglob("*.tmp")), "temp file survived the restart"
        for path in files[:acked]:  # storescu sends in command-line order
            stored = _stored(data_dir, path)
            assert stored.is_file(), f"acknowledged {path.name} lost after SIGKILL"
            assert pixel_bytes(stored) == pixel_bytes(path)
        on_disk = sorted(p.stem for p in (data_dir / "spool").rglob("*.dcm"))
        assert done[0]["sop_uids"] == on_disk
        assert len(on_disk) >= acked
        # The push was cut short: the series is handed on once, as incomplete (never
        # contoured), after series.incomplete_wait_s; no second completion follows.
        with pytest.raises(AssertionError):
            wait_for(lambda: len(_completion_lines(completions)) > 1, 3.5, "no duplicate")
        [done] = _completion_lines(completions)
        assert (done["version"], done["reason"]) == (1, "incomplete")
        assert "the node stopped while an association was still sending" in done["incomplete"]
    finally:
        runner.stop()


def test_completion_not_handed_off_is_reemitted_once_after_restart(start_node, tmp_path):
    calls: list[str] = []

    def failing(completion):
        calls.append(completion.series_uid)
        raise RuntimeError("job queue unavailable")

    data_dir = tmp_path / "var"
    node, _ = start_node(data_dir=data_dir, callback=failing, series={"complete_after_s": 0.3})
    files = make_ct_series(tmp_path / "in", 3)
    assert storescu(node.port, files).returncode == 0
    wait_for(lambda: calls, 10, "first (failing) hand-off")
    node.stop()

    node2, completions = start_node(data_dir=data_dir)
    done = wait_for(lambda: completions.items, 10, "re-emitted completion")
    assert [(c.version, c.reason, c.num_instances) for c in done] == [(1, "restart", 3)]
    wait_for(lambda: node2.db.pending_handoffs() == [], 5, "handed_off flag set")
    node2.stop()

    node3, completions3 = start_node(data_dir=data_dir)
    with pytest.raises(AssertionError):
        wait_for(lambda: completions3.items, 1.5, "no re-emission once handed off")


def test_temp_and_incomplete_files_are_removed_and_lost_rows_are_rebuilt(start_node, tmp_path):
    data_dir = tmp_path / "var"
    files = make_ct_series(tmp_path / "in", 2)
    # A crash after rename but before the row: the file is there, the database is not.
    targets = [_stored(data_dir, p) for p in files]
    for source, target in zip(files, targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    temp = targets[0].parent / f".{targets[0].stem}.0123abcd.tmp"
    temp.write_bytes(b"half a file")
    # A power loss during a store: a short file under its final name, never acknowledged.
    cut = make_ct_series(
        tmp_path / "cut",
        1,
        seed=7,
        series_uid=dcmread(files[0]).SeriesInstanceUID,
        study_uid=dcmread(files[0]).StudyInstanceUID,
    )[0]
    cut_target = _stored(data_dir, cut)
    cut_target.write_bytes(cut.read_bytes()[:-500])

    node, completions = start_node(data_dir=data_dir, series={"complete_after_s": 0.5})
    assert not temp.exists()
    assert not cut_target.exists()
    done = wait_for(lambda: completions.items, 10, "completion of rebuilt series")
    assert done[0].num_instances == 2
    assert sorted(done[0].instance_paths) == sorted(targets)
    assert len(node.db.instance_rows()) == 2


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead


def test_write_failure_is_answered_out_of_resources_and_node_keeps_serving(tmp_path):
    port = free_port()
    config = _write_config(tmp_path, port)
    completions = tmp_path / "completions.jsonl"
    log_path = tmp_path / "node.log"
    runner = RunnerProcess(config, completions, log_path, preexec_fn=_limit_file_size)
    try:
        big = make_ct_series(tmp_path / "big", 1, rows=512, columns=512)  # 512 kB > limit
        result = storescu(port, big)
        assert "Received Store Response (Refused: OutOfResources)" in result.stderr, result.stderr
        assert not _stored(tmp_path / "var", big[0]).exists()
        assert not list((tmp_path / "var" / "spool").rglob("*.tmp"))
        small = make_ct_series(tmp_path / "small", 1, seed=2)
        result = storescu(port, small)
        assert "Received Store Response (Success)" in result.stderr, result.stderr
        assert _stored(tmp_path / "var", small[0]).is_file()
    finally:
        runner.stop()
    log_text = log_path.read_text()
    assert "refused with status 0xA700" in log_text
    assert "check free space and permissions" in log_text
