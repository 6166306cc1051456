"""Routing rules: the ``rules:`` section of the config file (pydantic v2).

A rule is declarative: a ``match:`` block of conditions on the series header
and the association, and actions (models, destinations, outputs, ...). Nothing
in a rule is evaluated as code. Every model forbids unknown keys, so a
misspelt key is an error with its location (see ``daemon.config.load_config``).

Semantics (enforced by :func:`routing.engine.route`): rules are tried in file
order; the first rule that matches wins unless it says ``continue: true``, in
which case later rules are tried too and every matching rule runs. All keys in
one ``match:`` block must hold (AND); ``any:`` needs one of its blocks,
``all:`` all of them and ``not:`` fails when its block holds.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from routing.suggest import did_you_mean

#: Modalities a rule may name (DICOM PS3.3 C.7.3.1.1.1 defined terms in use).
KNOWN_MODALITIES: tuple[str, ...] = (
    "CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "OT", "SC",
    "RTIMAGE", "RTSTRUCT", "RTDOSE", "RTPLAN", "RTRECORD", "REG", "SEG", "SR",
    "KO", "PR",
)  # fmt: skip

#: Patient positions (0018,5100) a rule may name.
KNOWN_PATIENT_POSITIONS: tuple[str, ...] = (
    "HFS", "HFP", "FFS", "FFP", "HFDR", "HFDL", "FFDR", "FFDL",
    "LFP", "LFS", "RFP", "RFS", "AFDR", "AFDL", "PFDR", "PFDL",
)  # fmt: skip

#: Slice orientations derived from Image Orientation (Patient).
ORIENTATIONS: tuple[str, ...] = ("axial", "sagittal", "coronal", "oblique")

#: Placeholders a ``structure_set_label`` template may use.
LABEL_FIELDS: tuple[str, ...] = (
    "model_name", "model_version", "rule", "date", "time", "modality",
    "series_description",
)  # fmt: skip

#: DICOM Structure Set Label (3006,0002) is a Short String: 16 characters.
STRUCTURE_SET_LABEL_MAX_CHARS = 16

_MODEL_REF_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<version>\d+\.\d+\.\d+[0-9A-Za-z.+-]*))?$"
)
_TIME_RE = re.compile(r"^(?P<h>[01]\d|2[0-3]):(?P<m>[0-5]\d)$")

REGEX_PREFIX = "regex:"


class RuleModel(BaseModel):
    """Base of every rule section: unknown keys are errors; aliases accepted."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class TextPattern(RuleModel):
    """A text condition in its long form; exactly one of the three kinds.

    ``contains`` is a substring test, ``equals`` a whole-value test and
    ``regex`` a Python regular expression searched anywhere in the value
    (anchor it with ``^...$`` for a whole-value match). All are
    case-insensitive unless ``case_sensitive: true``.
    """

    contains: str | None = None
    equals: str | None = None
    regex: str | None = None
    case_sensitive: bool = False

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Self:
        kinds = [k for k in ("contains", "equals", "regex") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"a text pattern needs exactly one of contains/equals/regex, got "
                f"{kinds or 'none'}; write e.g. {{regex: '^HN', case_sensitive: false}}"
            )
        if self.regex is not None:
            _check_regex(self.regex)
        return self


#: ``"text"`` (substring), ``"regex:^text"`` or a :class:`TextPattern`;
#: a list means any one of them.
TextMatch = str | TextPattern | list[str | TextPattern]


def _check_regex(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(
            f"regex {pattern!r} is not a valid regular expression ({err}); "
            f"escape special characters like '(' or '+' with a backslash"
        ) from err


def text_patterns(value: TextMatch) -> list[TextPattern]:
    """The long form of a text condition as a list of alternatives."""
    items = value if isinstance(value, list) else [value]
    patterns = []
    for item in items:
        if isinstance(item, TextPattern):
            patterns.append(item)
        elif item.startswith(REGEX_PREFIX):
            patterns.append(TextPattern(regex=item[len(REGEX_PREFIX) :]))
        else:
            patterns.append(TextPattern(contains=item))
    return patterns


def as_list(value: str | list[str]) -> list[str]:
    """A one-or-many value as a list."""
    return value if isinstance(value, list) else [value]


def _check_bounds(low: float | None, high: float | None, example: str) -> None:
    """Raise ``ValueError`` unless a range has a bound and ``low <= high``."""
    if low is None and high is None:
        raise ValueError(f"a range needs min, max or both, e.g. {example}")
    if low is not None and high is not None and low > high:
        raise ValueError(f"range min {low} is above max {high}; swap them")


class FloatRange(RuleModel):
    """Closed interval ``[min, max]``; either bound may be left out."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        _check_bounds(self.min, self.max, "{min: 1.0, max: 3.0}")
        return self


class IntRange(RuleModel):
    """Closed interval ``[min, max]`` of counts; either bound may be left out."""

    min: Annotated[int, Field(ge=0)] | None = None
    max: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        _check_bounds(self.min, self.max, "{min: 20}")
        return self


def _check_choices(value: str | list[str] | None, allowed: tuple[str, ...], what: str) -> None:
    if value is None:
        return
    for item in as_list(value):
        if item.strip().upper() not in {a.upper() for a in allowed}:
            raise ValueError(
                f"{what} {item!r} is not one of {', '.join(allowed)}{did_you_mean(item, allowed)}"
            )


OneOrMore = str | list[str]
"""One value or a list of values, any of which matches."""


def _optional(description: str) -> Any:
    """A condition that is not checked when left out."""
    return Field(default=None, description=description)


def _text(attribute: str) -> Any:
    """A text condition on a DICOM attribute: a substring or ``regex:...``."""
    return _optional(f"{attribute}: substring or 'regex:...'.")


class Match(RuleModel):
    """Conditions on a series; every key given must hold.

    Conditions are checked in the order of the fields below, and the first one
    that fails is the one an explanation reports. Values are compared
    case-insensitively. A list of values means "any of these".
    """

    modality: OneOrMore | None = _optional("Modality (0008,0060), e.g. CT or [CT, MR].")
    body_part: OneOrMore | None = _optional(
        "Body Part Examined (0018,0015), compared after synonym normalisation."
    )
    series_description: TextMatch | None = _text("Series Description (0008,103E)")
    study_description: TextMatch | None = _text("Study Description (0008,1030)")
    protocol_name: TextMatch | None = _text("Protocol Name (0018,1030)")
    calling_ae: OneOrMore | None = _optional(
        "AE title of the sender (the association's calling AE)."
    )
    called_ae: OneOrMore | None = _optional("AE title the sender addressed (our called AE).")
    manufacturer: TextMatch | None = _text("Manufacturer (0008,0070)")
    station_name: TextMatch | None = _text("Station Name (0008,1010)")
    image_type_contains: OneOrMore | None = _optional(
        "Values that must all be in Image Type (0008,0008), e.g. [ORIGINAL, AXIAL]."
    )
    slice_thickness_mm: FloatRange | None = _optional(
        "Slice Thickness (0018,0050) in mm, {min, max}."
    )
    num_images: IntRange | None = _optional("Number of images (frames) in the series, {min, max}.")
    orientation: OneOrMore | None = _optional(
        "Slice orientation from Image Orientation (Patient): "
        "axial, sagittal, coronal or oblique (more than 30 degrees off every axis)."
    )
    patient_position: OneOrMore | None = _optional("Patient Position (0018,5100), e.g. HFS.")
    all_: list[Match] | None = Field(
        default=None, alias="all", description="Every block in the list must hold."
    )
    any_: list[Match] | None = Field(
        default=None, alias="any", description="At least one block in the list must hold."
    )
    not_: Match | None = Field(default=None, alias="not", description="This block must not hold.")

    @field_validator("modality")
    @classmethod
    def _known_modality(cls, value: str | list[str] | None) -> str | list[str] | None:
        _check_choices(value, KNOWN_MODALITIES, "modality")
        return value

    @field_validator("orientation")
    @classmethod
    def _known_orientation(cls, value: str | list[str] | None) -> str | list[str] | None:
        _check_choices(value, ORIENTATIONS, "orientation")
        return value

    @field_validator("patient_position")
    @classmethod
    def _known_position(cls, value: str | list[str] | None) -> str | list[str] | None:
        _check_choices(value, KNOWN_PATIENT_POSITIONS, "patient_position")
        return value

    @field_validator(
        "series_description", "study_description", "protocol_name", "manufacturer", "station_name"
    )
    @classmethod
    def _valid_regexes(cls, value: TextMatch | None) -> TextMatch | None:
        if value is not None:
            for pattern in text_patterns(value):
                if pattern.regex is not None:
                    _check_regex(pattern.regex)
        return value

    @field_validator("all_", "any_")
    @classmethod
    def _non_empty_group(cls, value: list[Match] | None) -> list[Match] | None:
        if value is not None and not value:
            raise ValueError("an all:/any: group needs at least one block")
        return value


@dataclass(frozen=True)
class ModelRef:
    """A model a rule runs: its name and, when pinned, its version.

    ``version`` is ``None`` for "the newest approved version at run time".
    """

    name: str
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse ``"hn-oar"`` or ``"hn-oar@1.2.0"``."""
        found = _MODEL_REF_RE.match(text.strip())
        if not found:
            raise ValueError(
                f"model {text!r} is not 'name' or 'name@version' (version like 1.2.0), "
                f"e.g. 'hn-oar' for the newest approved version or 'hn-oar@1.2.0'"
            )
        return cls(found["name"], found["version"])

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def _check_clock_time(value: str) -> str:
    if not _TIME_RE.match(value):
        raise ValueError(
            f"time {value!r} is not HH:MM on a 24-hour clock; write e.g. '20:00' or '06:30' "
            "(quote it in YAML)"
        )
    return value


ClockTime = Annotated[str, AfterValidator(_check_clock_time)]
"""A local wall-clock time ``HH:MM`` (24 h)."""


class Schedule(RuleModel):
    """A daily window in local wall-clock time, ``[start, end)``.

    ``start: "20:00", end: "06:00"`` crosses midnight: 20:00 to 23:59 and
    00:00 to 05:59. Series that complete outside the window are queued
    until it opens (see :func:`routing.schedule.next_window_start`).
    """

    start: ClockTime = Field(description="Opening time, HH:MM (24 h, local time).")
    end: ClockTime = Field(description="Closing time, HH:MM (24 h, local time), exclusive.")

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.start == self.end:
            raise ValueError(
                f"schedule start and end are both {self.start}; leave out schedule: "
                f"to run at any time"
            )
        return self

    def minutes(self) -> tuple[int, int]:
        """``(start, end)`` as minutes after local midnight."""
        hs, ms = self.start.split(":")
        he, me = self.end.split(":")
        return int(hs) * 60 + int(ms), int(he) * 60 + int(me)


OutputKind = Literal["rtstruct", "seg"]
CompleteOn = Literal["quiet_period", "association_release"]
OnResend = Literal["ignore", "redeliver"]


def _default_outputs() -> list[OutputKind]:
    return ["rtstruct"]


class Rule(RuleModel):
    """One routing rule: a match and what to do with the series it matches."""

    name: str = Field(min_length=1, description="Unique name, shown in logs and job records.")
    description: str | None = Field(default=None, description="Free text for the reader.")
    enabled: bool = Field(default=True, description="false keeps the rule but never tries it.")
    match: Match = Field(default_factory=Match, description="Conditions; empty matches all.")
    model: str | list[str] = Field(
        description="'name' (newest approved), 'name@1.2.0' (pinned) or a list: all run, "
        "their ROIs go into one structure set; a name clash keeps the earlier model's ROI."
    )
    send_to: str | list[str] = Field(
        default_factory=list, description="Destination name(s) from destinations:."
    )
    outputs: list[OutputKind] = Field(
        default_factory=_default_outputs, min_length=1, description="rtstruct, seg or both."
    )
    structure_set_label: str = Field(
        default="{model_name}",
        description="Template for the Structure Set Label (16 characters at most after "
        "filling in); placeholders: " + ", ".join("{" + f + "}" for f in LABEL_FIELDS),
    )
    shadow: bool = Field(default=False, description="Run and record, never send.")
    complete_on: CompleteOn | None = Field(
        default=None,
        description="When a series counts as complete; default from series.complete_on.",
    )
    on_resend: OnResend = Field(
        default="ignore",
        description="A series pushed again unchanged makes no new structure set; 'redeliver' "
        "sends the existing one again (same SOP Instance UID), 'ignore' only records it.",
    )
    priority: int = Field(default=0, description="Higher runs first when jobs are queued.")
    schedule: Schedule | None = Field(
        default=None, description="Only run inside this daily window; queued until then."
    )
    continue_: bool = Field(
        default=False, alias="continue", description="Also try the rules after this one."
    )
    nnunet_mode: Literal["exact", "fast"] | None = Field(
        default=None,
        description="nnU-Net models only: run in this mode instead of the card's nnunet.mode "
        "(exact reproduces nnUNetPredictor; fast crops to the patient, fewer windows).",
    )

    @field_validator("model")
    @classmethod
    def _model_refs(cls, value: str | list[str]) -> str | list[str]:
        refs = [ModelRef.parse(v) for v in as_list(value)]
        if not refs:
            raise ValueError("model needs at least one model name, e.g. model: body")
        names = [r.name for r in refs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model list names {duplicates} more than once; list each once")
        return value

    @field_validator("outputs")
    @classmethod
    def _unique_outputs(cls, value: list[OutputKind]) -> list[OutputKind]:
        return list(dict.fromkeys(value))

    @field_validator("structure_set_label")
    @classmethod
    def _label_fields(cls, value: str) -> str:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as err:
            raise ValueError(
                f"structure_set_label {value!r} is not a valid template ({err}); "
                f"write placeholders as {{model_name}} and literal braces as {{{{ }}}}"
            ) from err
        for field in fields:
            if field not in LABEL_FIELDS:
                raise ValueError(
                    f"structure_set_label placeholder {{{field}}} is unknown; use one of "
                    f"{', '.join(LABEL_FIELDS)}{did_you_mean(field, LABEL_FIELDS)}"
                )
        return value

    @property
    def model_refs(self) -> list[ModelRef]:
        """The models to run, in list order (earlier wins an ROI name clash)."""
        return [ModelRef.parse(v) for v in as_list(self.model)]

    @property
    def destinations(self) -> list[str]:
        """Destination names, in order."""
        return as_list(self.send_to)


def rule_summary(rule: Rule) -> dict[str, Any]:
    """A short, JSON-friendly description of a rule's actions (for logs and CLI)."""
    return {
        "rule": rule.name,
        "models": [str(r) for r in rule.model_refs],
        "send_to": rule.destinations,
        "outputs": list(rule.outputs),
        "shadow": rule.shadow,
        "priority": rule.priority,
        "schedule": None if rule.schedule is None else f"{rule.schedule.start}-{rule.schedule.end}",
    }
