"""Routing rule models (the ``rules:`` section of the config).

Owned by the routing package; this first version is the minimal shape the
config sketch uses and is extended by the routing issue.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Rule(BaseModel):
    """One routing rule: a match and the actions for series it matches."""

    model_config = ConfigDict(extra="forbid")

    name: str
    match: dict[str, Any] = Field(default_factory=dict)
    model: str | list[str]
    send_to: list[str] = Field(default_factory=list)
