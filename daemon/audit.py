"""Writing changes that are not a model's to the audit trail (``contourd models audit``).

Jobs resent, retried or segmented again, and web users added or removed, are
recorded with who, when and what, by the CLI and the web application alike,
in the registry's ``audit`` table (:meth:`ModelRegistry.record`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_store.registry import ModelRegistry


def record_change(
    data_dir: Path,
    *,
    by: str,
    action: str,
    subject: str,
    after: dict[str, Any] | None = None,
    note: str | None = None,
) -> None:
    """One audit row: ``by`` did ``action`` to ``subject`` (``job 12``, ``user alice``)."""
    with ModelRegistry(Path(data_dir), builtin_dir=None) as registry:
        registry.record(by=by, action=action, subject=subject, after=after, note=note)
