"""Suggestions ("did you mean ...?") for misspelt keys and values."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(value: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The choice most similar to ``value`` (case-insensitive), or ``None``.

    Parameters
    ----------
    value
        What the user wrote.
    choices
        The allowed spellings.
    cutoff
        Minimum similarity ratio in [0, 1] (``difflib`` ratio).
    """
    options = list(dict.fromkeys(choices))
    by_upper = {c.upper(): c for c in options}
    found = difflib.get_close_matches(value.upper(), list(by_upper), n=1, cutoff=cutoff)
    return by_upper[found[0]] if found else None


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    best = closest(value, choices)
    return f"; did you mean {best!r}?" if best is not None else ""
