"""Apply routing rules to a series: ``route(attrs, rules) -> RouteDecision``.

Rules are tried in order. The first rule whose ``match:`` holds wins; if it
says ``continue: true`` the rules after it are tried as well and every
matching rule is kept, in order. Disabled rules are skipped. For every rule
tried and not matched, the decision records the first condition that failed
and the actual header value, so a physicist can see why a series went where
it went (``contourd routes test``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from routing.body_part import BodyPartNormaliser
from routing.rules import (
    STRUCTURE_SET_LABEL_MAX_CHARS,
    FloatRange,
    IntRange,
    Match,
    ModelRef,
    Rule,
    Schedule,
    TextMatch,
    TextPattern,
    as_list,
    text_patterns,
)
from routing.schedule import is_within_window, next_window_start
from routing.series_attributes import SeriesAttributes

__all__ = [
    "ConditionFailure",
    "RouteDecision",
    "RouteMatch",
    "RuleExplanation",
    "is_within_window",
    "next_window_start",
    "route",
]

NO_RULE_MATCHED = "no rule matched"
MISSING = "(missing)"


@dataclass(frozen=True)
class ConditionFailure:
    """The first condition of a rule that did not hold.

    Attributes
    ----------
    path
        Where the condition is in the rule, e.g. ``match.any[1].body_part``.
    expected
        What the condition asks for, in words.
    actual
        The header (or association) value, or ``(missing)``.
    """

    path: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.path}: expected {self.expected}, series has {self.actual}"


Outcome = Literal["matched", "failed", "disabled", "not_tried"]


@dataclass(frozen=True)
class RuleExplanation:
    """What happened to one rule for one series."""

    rule: str
    position: int  # 1-based position in the rules list
    outcome: Outcome
    failure: ConditionFailure | None = None
    matched_before: str | None = None  # for not_tried: the rule that stopped the search

    def describe(self) -> str:
        """One line of explanation."""
        if self.outcome == "matched":
            return "matched"
        if self.outcome == "disabled":
            return "disabled (enabled: false)"
        if self.outcome == "not_tried":
            return (
                f"not tried: rule {self.matched_before!r} matched first and has no continue: true"
            )
        return f"no match: {self.failure}"


@dataclass(frozen=True)
class RouteMatch:
    """A matched rule's actions, ready for the job queue."""

    rule: str
    models: tuple[ModelRef, ...]
    send_to: tuple[str, ...]
    outputs: tuple[str, ...]
    structure_set_label: str
    shadow: bool
    priority: int
    schedule: Schedule | None
    complete_on: str | None
    nnunet_mode: str | None = None

    @classmethod
    def from_rule(cls, rule: Rule) -> RouteMatch:
        """The actions of ``rule``."""
        return cls(
            rule=rule.name,
            models=tuple(rule.model_refs),
            send_to=tuple(rule.destinations),
            outputs=tuple(rule.outputs),
            structure_set_label=rule.structure_set_label,
            shadow=rule.shadow,
            priority=rule.priority,
            schedule=rule.schedule,
            complete_on=rule.complete_on,
            nnunet_mode=rule.nnunet_mode,
        )

    def render_label(
        self,
        *,
        model_name: str,
        model_version: str,
        when: datetime,
        attrs: SeriesAttributes | None = None,
    ) -> str:
        """Fill in the Structure Set Label template, cut to 16 characters (DICOM SH).

        ``{date}`` is ``YYYYMMDD`` and ``{time}`` ``HHMM`` of ``when``.
        """
        values = {
            "model_name": model_name,
            "model_version": model_version,
            "rule": self.rule,
            "date": when.strftime("%Y%m%d"),
            "time": when.strftime("%H%M"),
            "modality": (attrs.modality if attrs else None) or "",
            "series_description": (attrs.series_description if attrs else None) or "",
        }
        text = self.structure_set_label.format(**values).replace("\\", "/").strip()
        return text[:STRUCTURE_SET_LABEL_MAX_CHARS].rstrip()

    def may_run_at(self, now: datetime) -> bool:
        """Whether the rule's schedule allows a run at ``now`` (local time)."""
        return is_within_window(now, self.schedule)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for job records and ``routes test --json``."""
        return {
            "rule": self.rule,
            "models": [str(m) for m in self.models],
            "send_to": list(self.send_to),
            "outputs": list(self.outputs),
            "structure_set_label": self.structure_set_label,
            "shadow": self.shadow,
            "priority": self.priority,
            "schedule": None
            if self.schedule is None
            else {"start": self.schedule.start, "end": self.schedule.end},
            "complete_on": self.complete_on,
            "nnunet_mode": self.nnunet_mode,
        }


@dataclass(frozen=True)
class RouteDecision:
    """The outcome of routing one series.

    ``matched`` is empty when no rule matched; ``reason`` then says
    ``"no rule matched"`` and ``explanations`` say why each rule failed.
    """

    matched: tuple[RouteMatch, ...]
    explanations: tuple[RuleExplanation, ...]
    reason: str
    attrs: SeriesAttributes | None = field(default=None, compare=False)

    @property
    def routed(self) -> bool:
        """Whether at least one rule matched."""
        return bool(self.matched)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for job records (no patient identifiers)."""
        return {
            "routed": self.routed,
            "reason": self.reason,
            "matched": [m.to_dict() for m in self.matched],
            "explanations": [
                {
                    "rule": e.rule,
                    "position": e.position,
                    "outcome": e.outcome,
                    "detail": e.describe(),
                }
                for e in self.explanations
            ],
        }


def route(
    attrs: SeriesAttributes,
    rules: Sequence[Rule],
    *,
    body_part_synonyms: Mapping[str, Sequence[str]] | None = None,
) -> RouteDecision:
    """Decide which rules apply to a series.

    Parameters
    ----------
    attrs
        The series' header values and association info.
    rules
        Rules in file order.
    body_part_synonyms
        Clinic synonyms (canonical -> aliases) on top of the built-in table.

    Returns
    -------
    RouteDecision
        Matched rules in order, and one explanation per rule.
    """
    normaliser = _normaliser(_freeze(body_part_synonyms))
    matched: list[RouteMatch] = []
    explanations: list[RuleExplanation] = []
    stopped_by: str | None = None
    for position, rule in enumerate(rules, start=1):
        if stopped_by is not None:
            explanations.append(
                RuleExplanation(rule.name, position, "not_tried", matched_before=stopped_by)
            )
            continue
        if not rule.enabled:
            explanations.append(RuleExplanation(rule.name, position, "disabled"))
            continue
        failure = _first_failure(rule.match, attrs, normaliser, "match")
        if failure is not None:
            explanations.append(RuleExplanation(rule.name, position, "failed", failure))
            continue
        explanations.append(RuleExplanation(rule.name, position, "matched"))
        matched.append(RouteMatch.from_rule(rule))
        if not rule.continue_:
            stopped_by = rule.name
    names = ", ".join(repr(m.rule) for m in matched)
    reason = f"matched {names}" if matched else NO_RULE_MATCHED
    return RouteDecision(tuple(matched), tuple(explanations), reason, attrs)


def _freeze(
    synonyms: Mapping[str, Sequence[str]] | None,
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not synonyms:
        return ()
    return tuple(sorted((k, tuple(v)) for k, v in synonyms.items()))


@lru_cache(maxsize=16)
def _normaliser(frozen: tuple[tuple[str, tuple[str, ...]], ...]) -> BodyPartNormaliser:
    return BodyPartNormaliser(dict(frozen))


@lru_cache(maxsize=1024)
def _compiled(pattern: str, case_sensitive: bool) -> re.Pattern[str]:
    return re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)


def _quote(text: str) -> str:
    """Quote for display without Python escaping (regexes keep single backslashes)."""
    return f"'{text}'"


def _show(value: object) -> str:
    if value is None or value == "" or value == ():
        return MISSING
    if isinstance(value, tuple):
        return _quote("\\".join(str(v) for v in value))
    return _quote(str(value))


def _one_of(values: Sequence[str]) -> str:
    return repr(values[0]) if len(values) == 1 else "one of " + ", ".join(map(repr, values))


def _pattern_matches(pattern: TextPattern, value: str) -> bool:
    if pattern.regex is not None:
        return _compiled(pattern.regex, pattern.case_sensitive).search(value) is not None
    needle = pattern.contains if pattern.contains is not None else pattern.equals
    assert needle is not None
    hay, needle_cmp = (value, needle) if pattern.case_sensitive else (value.lower(), needle.lower())
    if pattern.contains is not None:
        return needle_cmp in hay
    return hay.strip() == needle_cmp.strip()


def _describe_pattern(pattern: TextPattern) -> str:
    case = " (case-sensitive)" if pattern.case_sensitive else ""
    if pattern.regex is not None:
        return f"regex {_quote(pattern.regex)}{case}"
    if pattern.contains is not None:
        return f"text containing {_quote(pattern.contains)}{case}"
    return f"text equal to {_quote(pattern.equals or '')}{case}"


def _text_failure(path: str, condition: TextMatch, value: str | None) -> ConditionFailure | None:
    patterns = text_patterns(condition)
    if value is not None and any(_pattern_matches(p, value) for p in patterns):
        return None
    expected = " or ".join(_describe_pattern(p) for p in patterns)
    return ConditionFailure(path, expected, _show(value))


def _choice_failure(
    path: str, condition: str | list[str], value: str | None
) -> ConditionFailure | None:
    wanted = as_list(condition)
    if value is not None and value.strip().upper() in {w.strip().upper() for w in wanted}:
        return None
    return ConditionFailure(path, _one_of(wanted), _show(value))


def _range_failure(
    path: str, condition: FloatRange | IntRange, value: float | None, unit: str
) -> ConditionFailure | None:
    low, high = condition.min, condition.max
    if value is not None and (low is None or value >= low) and (high is None or value <= high):
        return None
    if low is not None and high is not None:
        expected = f"between {low:g} and {high:g}{unit}"
    elif low is not None:
        expected = f"at least {low:g}{unit}"
    else:
        expected = f"at most {high:g}{unit}"
    if value is None:
        actual = MISSING
    elif value == 1 and unit == " images":
        actual = "1 image"
    else:
        actual = f"{value:g}{unit}"
    return ConditionFailure(path, expected, actual)


_ATTRIBUTE_FOR_KEY = {"image_type_contains": "image_type", "body_part": "body_part"}


def _held(match: Match, attrs: SeriesAttributes) -> str:
    """The series values a block that held looked at, e.g. ``image_type 'ORIGINAL\\LOCALIZER'``."""
    shown = []
    for key in type(match).model_fields:
        if getattr(match, key) is None:
            continue
        if key in ("all_", "any_", "not_"):
            shown.append(f"a {key.rstrip('_')}: group that held")
            continue
        attribute = _ATTRIBUTE_FOR_KEY.get(key, key)
        shown.append(f"{attribute} {_show(getattr(attrs, attribute))}")
    return ", ".join(shown) + " (all conditions in it held)"


def _first_failure(
    match: Match, attrs: SeriesAttributes, normaliser: BodyPartNormaliser, path: str
) -> ConditionFailure | None:
    """The first condition of ``match`` that fails for ``attrs``, or ``None``.

    Conditions are checked in the order the :class:`~routing.rules.Match`
    fields are declared; groups (``all``, ``any``, ``not``) last.
    """
    failure: ConditionFailure | None
    if match.modality is not None and (
        failure := _choice_failure(f"{path}.modality", match.modality, attrs.modality)
    ):
        return failure
    if match.body_part is not None:
        wanted = [normaliser.normalise(v) for v in as_list(match.body_part)]
        actual = attrs.body_part
        normalised = normaliser.normalise(actual) if actual else None
        if normalised is None or normalised not in wanted:
            shown = _show(actual)
            if actual and normalised != actual:
                shown += f" (normalised: {normalised!r})"
            return ConditionFailure(f"{path}.body_part", _one_of(wanted), shown)
    for key in ("series_description", "study_description", "protocol_name"):
        condition = getattr(match, key)
        if condition is not None and (
            failure := _text_failure(f"{path}.{key}", condition, getattr(attrs, key))
        ):
            return failure
    for key in ("calling_ae", "called_ae"):
        condition = getattr(match, key)
        if condition is not None and (
            failure := _choice_failure(f"{path}.{key}", condition, getattr(attrs, key))
        ):
            return failure
    for key in ("manufacturer", "station_name"):
        condition = getattr(match, key)
        if condition is not None and (
            failure := _text_failure(f"{path}.{key}", condition, getattr(attrs, key))
        ):
            return failure
    if match.image_type_contains is not None:
        wanted = [v.strip().upper() for v in as_list(match.image_type_contains)]
        if any(w not in attrs.image_type for w in wanted):
            return ConditionFailure(
                f"{path}.image_type_contains",
                "image type with " + ", ".join(map(repr, wanted)),
                _show(attrs.image_type),
            )
    if match.slice_thickness_mm is not None and (
        failure := _range_failure(
            f"{path}.slice_thickness_mm", match.slice_thickness_mm, attrs.slice_thickness_mm, " mm"
        )
    ):
        return failure
    if match.num_images is not None and (
        failure := _range_failure(
            f"{path}.num_images", match.num_images, float(attrs.num_images), " images"
        )
    ):
        return failure
    if match.orientation is not None:
        wanted = [v.lower() for v in as_list(match.orientation)]
        if attrs.orientation not in wanted:
            actual = _show(attrs.orientation)
            if attrs.image_orientation_patient is not None:
                iop = ", ".join(f"{v:.3g}" for v in attrs.image_orientation_patient)
                actual += f" (ImageOrientationPatient [{iop}])"
            return ConditionFailure(f"{path}.orientation", _one_of(wanted), actual)
    if match.patient_position is not None and (
        failure := _choice_failure(
            f"{path}.patient_position", match.patient_position, attrs.patient_position
        )
    ):
        return failure
    for i, block in enumerate(match.all_ or []):
        if failure := _first_failure(block, attrs, normaliser, f"{path}.all[{i}]"):
            return failure
    if match.any_ is not None:
        failures = [
            _first_failure(block, attrs, normaliser, f"{path}.any[{i}]")
            for i, block in enumerate(match.any_)
        ]
        if all(f is not None for f in failures):
            detail = "; ".join(
                str(f).removeprefix(f"{path}.any") for f in failures if f is not None
            )
            return ConditionFailure(
                f"{path}.any", f"one of its {len(failures)} blocks to hold", f"none: {detail}"
            )
    if (
        match.not_ is not None
        and _first_failure(match.not_, attrs, normaliser, f"{path}.not") is None
    ):
        return ConditionFailure(f"{path}.not", "its block not to hold", _held(match.not_, attrs))
    return None
