"""Hot reload: a valid edit replaces the config, an invalid one is logged and ignored."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from routing_helpers import make_attrs, wait_for

from contourd.errors import ConfigError
from daemon.config_watcher import ConfigHolder, ConfigWatcher
from routing.engine import route

V1 = """\
rules:
  - name: every-ct
    match: {modality: CT}
    model: body
"""
V2 = """\
rules:
  - name: hn
    match: {modality: CT, body_part: H&N}
    model: hn-oar
  - name: every-ct
    match: {modality: CT}
    model: body
"""
BAD = V2.replace("body_part: H&N", "body_prt: H&N")


def write(path: Path, text: str) -> None:
    """Write and move the mtime forward so a same-second rewrite is still seen."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    if path.stat().st_mtime_ns <= before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def rule_names(holder: ConfigHolder) -> list[str]:
    return [r.name for r in holder.current.rules]


def test_valid_edit_takes_effect_for_series_routed_after_it(tmp_path: Path) -> None:
    path = tmp_path / "contourd.yaml"
    write(path, V1)
    holder = ConfigHolder(path)
    before = holder.current
    assert route(make_attrs(), before.rules).matched[0].rule == "every-ct"
    assert holder.reload_if_changed() is False  # unchanged file
    write(path, V2)
    assert holder.reload_if_changed() is True
    assert rule_names(holder) == ["hn", "every-ct"]
    assert route(make_attrs(), holder.current.rules).matched[0].rule == "hn"
    # a series already being routed keeps the config object it took
    assert [r.name for r in before.rules] == ["every-ct"]
    assert holder.generation == 1


def test_invalid_edit_is_logged_and_the_old_config_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "contourd.yaml"
    write(path, V1)
    holder = ConfigHolder(path)
    write(path, BAD)
    with caplog.at_level(logging.ERROR, logger="daemon.config_watcher"):
        assert holder.reload_if_changed() is False
    assert rule_names(holder) == ["every-ct"]
    assert holder.last_error is not None and "did you mean 'body_part'?" in holder.last_error
    assert any("invalid; keeping the config in use" in r.getMessage() for r in caplog.records)
    assert any(":3:27: rules[0].match.body_prt" in r.getMessage() for r in caplog.records)
    # polling the same bad file again does not log again
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="daemon.config_watcher"):
        assert holder.reload_if_changed() is False
    assert not caplog.records
    # fixing the file applies it
    write(path, V2)
    assert holder.reload_if_changed() is True
    assert rule_names(holder) == ["hn", "every-ct"]
    assert holder.last_error is None


def test_touching_the_file_without_changing_it_does_not_reload(tmp_path: Path) -> None:
    path = tmp_path / "contourd.yaml"
    write(path, V1)
    holder = ConfigHolder(path)
    write(path, V1)
    assert holder.reload_if_changed() is False
    assert holder.generation == 0


def test_deleted_file_keeps_the_old_config(tmp_path: Path) -> None:
    path = tmp_path / "contourd.yaml"
    write(path, V1)
    holder = ConfigHolder(path)
    path.unlink()
    assert holder.reload_if_changed() is False
    assert rule_names(holder) == ["every-ct"]
    assert holder.last_error is not None and "cannot read" in holder.last_error


def test_invalid_file_at_start_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "contourd.yaml"
    write(path, BAD)
    with pytest.raises(ConfigError, match="body_prt"):
        ConfigHolder(path)


def test_watcher_thread_picks_up_an_edit(tmp_path: Path) -> None:
    path = tmp_path / "contourd.yaml"
    write(path, V1)
    holder = ConfigHolder(path)
    watcher = ConfigWatcher(holder, interval_s=0.05)
    watcher.start()
    try:
        write(path, V2)
        wait_for(lambda: rule_names(holder) == ["hn", "every-ct"], 5.0, "the watcher to reload")
    finally:
        watcher.stop()
