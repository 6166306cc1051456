"""Map the ROI names a planning system exports to a model's (TG-263) ROI names.

Clinics name the same organ many ways: ``"Parotid L"``, ``"L_Parotid"``,
``"Parotid_L"``, ``"LeftParotid"``, ``"PAROTID_LT"``. A name is reduced to a
*key* ``(base, side)``:

1. split into lower-case tokens at non-alphanumerics and camel-case humps
   (``"LeftParotid"`` -> ``left parotid``);
2. a first or last token meaning a side (``l``, ``lt``, ``lft``, ``left`` /
   ``r``, ``rt``, ``rgt``, ``right``) becomes the side ``"L"`` / ``"R"``;
3. the remaining tokens are joined (``brain stem`` -> ``brainstem``) and
   looked up in a synonym table (``mandible`` -> ``bonemandible``,
   ``oesophagus`` -> ``esophagus``, ``cord`` -> ``spinalcord``...).

Two names with the same key are the same organ. Planning helpers such as
``Parotid_L_PRV``, ``SpinalCord+5mm`` or ``z_Parotid_opt`` keep extra tokens
and so match nothing. A clinic's explicit mapping (YAML
``{Parotid_L: ["Parotide G", ...], ...}``) is applied first and matches
names exactly, ignoring case and surrounding spaces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from contourd.errors import TrainingError

SIDE_TOKENS = {
    "l": "L",
    "lt": "L",
    "lft": "L",
    "left": "L",
    "r": "R",
    "rt": "R",
    "rgt": "R",
    "right": "R",
}

#: Joined base tokens -> canonical base (the TG-263 name's base, lower case, no separators).
BASE_SYNONYMS = {
    "mandible": "bonemandible",
    "jaw": "bonemandible",
    "oesophagus": "esophagus",
    "esophag": "esophagus",
    "cord": "spinalcord",
    "spinal": "spinalcord",
    "myelon": "spinalcord",
    "parotidgland": "parotid",
    "submandibular": "glndsubmand",
    "submandibulargland": "glndsubmand",
    "glandsubmandibular": "glndsubmand",
    "submand": "glndsubmand",
    "opticnerve": "opticnrv",
    "chiasm": "opticchiasm",
    "eye": "eye",
    "globe": "eye",
    "cochlea": "cochlea",
    "oralcavity": "cavityoral",
    "cavityoral": "cavityoral",
    "body": "external",
    "skin": "external",
    "outline": "external",
}

_CAMEL_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def tokens(name: str) -> list[str]:
    """Lower-case tokens of a name (split at separators and camel-case humps)."""
    out: list[str] = []
    for part in re.split(r"[^0-9A-Za-z]+", name):
        out.extend(t.lower() for t in _CAMEL_RE.findall(part))
    return out


def name_key(name: str) -> tuple[str, str | None]:
    """``(base, side)`` of an ROI name; side is ``"L"``, ``"R"`` or ``None``."""
    toks = tokens(name)
    side: str | None = None
    if len(toks) > 1 and toks[-1] in SIDE_TOKENS:
        side = SIDE_TOKENS[toks.pop()]
    elif len(toks) > 1 and toks[0] in SIDE_TOKENS:
        side = SIDE_TOKENS[toks.pop(0)]
    base = "".join(toks)
    return BASE_SYNONYMS.get(base, base), side


class RoiNameMapper:
    """Decides which target ROI, if any, an exported ROI name stands for.

    Parameters
    ----------
    targets
        The model's ROI names, e.g. TG-263 ``["Parotid_L", "Bone_Mandible"]``.
    overrides
        Target name -> exported names that mean it (exact, case-insensitive).
        Keys must be in ``targets``.
    """

    def __init__(
        self, targets: Sequence[str], overrides: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self.targets = list(targets)
        self._by_key: dict[tuple[str, str | None], str] = {}
        for target in self.targets:
            key = name_key(target)
            if key in self._by_key:
                raise TrainingError(
                    f"ROI names {self._by_key[key]!r} and {target!r} mean the same organ "
                    f"{key}; list each organ once"
                )
            self._by_key[key] = target
        self._exact: dict[str, str] = {}
        for target, names in (overrides or {}).items():
            if target not in self.targets:
                raise TrainingError(
                    f"ROI mapping names target {target!r}, which is not one of the ROIs "
                    f"being trained ({', '.join(self.targets)}); fix the mapping file"
                )
            for name in names:
                self._exact[name.strip().lower()] = target

    def target_for(self, exported_name: str) -> str | None:
        """The target ROI an exported name stands for, or ``None``."""
        exact = self._exact.get(exported_name.strip().lower())
        if exact is not None:
            return exact
        return self._by_key.get(name_key(exported_name))


def load_mapping_file(path: Path) -> dict[str, list[str]]:
    """Read a YAML mapping ``{target: [exported names...]}``.

    Raises
    ------
    TrainingError
        When the file is not such a mapping.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        problem = " ".join(str(err).split())
        raise TrainingError(
            f"ROI mapping file {path} cannot be read ({problem}); give a YAML mapping "
            "{target: [exported names...]} (docs/training.md)"
        ) from err
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v)
        for k, v in raw.items()
    ):
        raise TrainingError(
            f"ROI mapping file {path} must map each model ROI name to a list of exported "
            'names, e.g. {Parotid_L: ["Parotide G", "PAROTIDE_GAUCHE"]}'
        )
    return {k: list(v) for k, v in raw.items()}
