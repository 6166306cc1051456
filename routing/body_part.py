"""Body part names, normalised so that spelling variants compare equal.

Scanners and PACS spell Body Part Examined (0018,0015) in many ways:
``HEADNECK``, ``HEAD_NECK``, ``HEAD-NECK``, ``HEAD NECK``, ``H&N``. Routing
compares *canonical* names: a value is upper-cased, spaces, underscores,
hyphens, dots and slashes are removed, and the result is looked up in a
synonyms table (canonical name -> aliases). The table below is the built-in
one; a clinic extends it with ``body_part_synonyms:`` in the config file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

#: Built-in synonyms: canonical name -> aliases (any spelling; squashed on use).
DEFAULT_BODY_PART_SYNONYMS: dict[str, list[str]] = {
    "HEADNECK": ["H&N", "HN", "HEAD AND NECK", "HEAD & NECK", "HEAD+NECK"],
    "HEAD": ["BRAIN", "SKULL", "CRANIUM"],
    "NECK": ["CSPINE NECK"],
    "CHEST": ["THORAX", "LUNG", "LUNGS"],
    "BREAST": [],
    "ABDOMEN": ["ABD"],
    "PELVIS": ["PELV"],
    "PROSTATE": [],
    "ABDOMENPELVIS": ["ABDOMEN AND PELVIS", "ABDPELVIS", "ABD PELVIS"],
    "CHESTABDOMEN": ["THORAX ABDOMEN"],
    "WHOLEBODY": ["WB", "WHOLE BODY"],
}

_SQUASH_RE = re.compile(r"[\s_\-./]+")


def squash_body_part(value: str) -> str:
    """Upper-case a body part and drop spaces, ``_``, ``-``, ``.`` and ``/``.

    Parameters
    ----------
    value
        A Body Part Examined value or a name from the config.

    Returns
    -------
    str
        ``"head_neck"`` -> ``"HEADNECK"``; ``"H&N"`` stays ``"H&N"``.
    """
    return _SQUASH_RE.sub("", value.strip().upper())


class BodyPartNormaliser:
    """Maps any spelling of a body part to its canonical name.

    Parameters
    ----------
    extra_synonyms
        Clinic synonyms (canonical name -> aliases) added to
        :data:`DEFAULT_BODY_PART_SYNONYMS`. An alias the clinic lists under a
        different canonical name than the built-in table wins.
    """

    def __init__(self, extra_synonyms: Mapping[str, Sequence[str]] | None = None) -> None:
        self._canonical: dict[str, str] = {}
        tables: list[Mapping[str, Sequence[str]]] = [DEFAULT_BODY_PART_SYNONYMS]
        if extra_synonyms:
            tables.append(extra_synonyms)
        for table in tables:
            for canonical, aliases in table.items():
                name = squash_body_part(canonical)
                self._canonical[name] = name
                for alias in aliases:
                    self._canonical[squash_body_part(alias)] = name

    def normalise(self, value: str) -> str:
        """Canonical name of ``value`` (its squashed form when it is unknown)."""
        squashed = squash_body_part(value)
        return self._canonical.get(squashed, squashed)

    def known_names(self) -> list[str]:
        """Every canonical name in the table, sorted (for suggestions)."""
        return sorted(set(self._canonical.values()))
