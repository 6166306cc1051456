"""Fixtures for the receive tests: an in-process node on a free port."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from receive_helpers import free_port

from daemon.config import ContourdConfig
from daemon.node import ReceiveNode
from daemon.series_assembler import SeriesCompletion


class Completions:
    """Thread-safe list of the completions a node handed off."""

    def __init__(self) -> None:
        self._items: list[SeriesCompletion] = []
        self._lock = threading.Lock()

    def __call__(self, completion: SeriesCompletion) -> None:
        with self._lock:
            self._items.append(completion)

    @property
    def items(self) -> list[SeriesCompletion]:
        with self._lock:
            return list(self._items)

    def for_series(self, series_uid: str) -> list[SeriesCompletion]:
        return [c for c in self.items if c.series_uid == series_uid]


def make_config(data_dir: Path, **sections: dict[str, Any]) -> ContourdConfig:
    """Config for tests: loopback, free port, no disk floor, short quiet period."""
    node = {
        "host": "127.0.0.1",
        "port": free_port(),
        "data_dir": str(data_dir),
        "min_free_disk_mb": 0,
    }
    node.update(sections.pop("node", {}))
    series = {"complete_after_s": 1.0}
    series.update(sections.pop("series", {}))
    return ContourdConfig.model_validate({"node": node, "series": series, **sections})


NodeFactory = Callable[..., tuple[ReceiveNode, Completions]]


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[NodeFactory]:
    """Start nodes (stopped at teardown): ``start_node(node={...}, series={...})``."""
    nodes: list[ReceiveNode] = []

    def _start(
        *,
        data_dir: Path | None = None,
        callback: Callable[[SeriesCompletion], None] | None = None,
        complete_on_release: Callable[[Any], bool] | None = None,
        **sections: dict[str, Any],
    ) -> tuple[ReceiveNode, Completions]:
        config = make_config(data_dir or tmp_path / "var", **sections)
        completions = Completions()
        node = ReceiveNode(config, callback or completions, complete_on_release=complete_on_release)
        node.start()
        nodes.append(node)
        return node, completions

    yield _start
    for node in nodes:
        node.stop()
