"""Body part spellings normalise to one value; clinics add synonyms in the config."""

from __future__ import annotations

import pytest
from routing_helpers import config_from, make_attrs, make_rule

from routing.body_part import BodyPartNormaliser
from routing.engine import route


@pytest.mark.parametrize(
    "spelling", ["HEADNECK", "HEAD_NECK", "H&N", "HEAD-NECK", "HEAD NECK", "head neck", "Head&Neck"]
)
def test_head_and_neck_spellings_are_one_value(spelling: str) -> None:
    assert BodyPartNormaliser().normalise(spelling) == "HEADNECK"


def test_unknown_body_part_is_compared_by_its_squashed_spelling() -> None:
    normaliser = BodyPartNormaliser()
    assert normaliser.normalise("lower leg") == normaliser.normalise("LOWER_LEG") == "LOWERLEG"
    assert normaliser.normalise("LOWER_LEG") != normaliser.normalise("LEG")


@pytest.mark.parametrize("rule_value", ["H&N", "HEAD-NECK", "headneck"])
@pytest.mark.parametrize("header_value", ["HEAD_NECK", "HEAD NECK", "H&N"])
def test_rule_and_header_spellings_match_each_other(rule_value: str, header_value: str) -> None:
    rule = make_rule(match={"body_part": rule_value})
    assert route(make_attrs(body_part=header_value), [rule]).routed


def test_different_body_parts_do_not_match_and_the_header_value_is_shown() -> None:
    rule = make_rule(match={"body_part": "H&N"})
    decision = route(make_attrs(body_part="Pelvis"), [rule])
    assert str(decision.explanations[0].failure) == (
        "match.body_part: expected 'HEADNECK', series has 'Pelvis' (normalised: 'PELVIS')"
    )


def test_configured_synonyms_extend_the_table() -> None:
    config = config_from(
        """
body_part_synonyms:
  HEADNECK: [ORL, "Hals Kopf"]
rules:
  - name: hn
    match: {body_part: HEADNECK}
    model: hn-oar
"""
    )
    for header in ("ORL", "hals-kopf"):
        decision = route(
            make_attrs(body_part=header), config.rules, body_part_synonyms=config.body_part_synonyms
        )
        assert decision.routed, header
    # without the clinic's table the same header does not match
    assert not route(make_attrs(body_part="ORL"), config.rules).routed
