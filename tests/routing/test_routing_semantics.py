"""Rule order: first match wins, continue: true, disabled rules, no match, actions."""

from __future__ import annotations

from datetime import datetime

from routing_helpers import make_attrs, make_rule

from routing.engine import NO_RULE_MATCHED, route
from routing.rules import ModelRef


def test_first_matching_rule_wins_and_later_rules_are_not_tried() -> None:
    rules = [
        make_rule("mr-only", match={"modality": "MR"}),
        make_rule("hn", match={"body_part": "HEADNECK"}, model="hn-oar"),
        make_rule("every-ct", match={"modality": "CT"}),
    ]
    decision = route(make_attrs(), rules)
    assert [m.rule for m in decision.matched] == ["hn"]
    outcomes = [(e.rule, e.outcome) for e in decision.explanations]
    assert outcomes == [("mr-only", "failed"), ("hn", "matched"), ("every-ct", "not_tried")]
    assert "rule 'hn' matched first" in decision.explanations[2].describe()


def test_continue_lets_later_rules_match_too_in_order() -> None:
    rules = [
        make_rule(
            "shadow",
            match={"modality": "CT"},
            model="hn-oar@1.1.0",
            shadow=True,
            **{"continue": True},
        ),
        make_rule("hn", match={"body_part": "HEADNECK"}, model="hn-oar"),
        make_rule("every-ct", match={"modality": "CT"}),
    ]
    decision = route(make_attrs(), rules)
    assert [m.rule for m in decision.matched] == ["shadow", "hn"]
    assert decision.matched[0].shadow and not decision.matched[1].shadow
    assert decision.explanations[2].outcome == "not_tried"


def test_continue_on_a_rule_that_does_not_match_changes_nothing() -> None:
    rules = [
        make_rule("mr", match={"modality": "MR"}, **{"continue": True}),
        make_rule("ct", match={"modality": "CT"}),
    ]
    assert [m.rule for m in route(make_attrs(), rules).matched] == ["ct"]


def test_disabled_rule_is_skipped() -> None:
    rules = [make_rule("off", enabled=False), make_rule("on")]
    decision = route(make_attrs(), rules)
    assert [m.rule for m in decision.matched] == ["on"]
    assert decision.explanations[0].outcome == "disabled"


def test_series_no_rule_matches_is_not_routed_with_reason_and_explanations() -> None:
    rules = [make_rule("mr", match={"modality": "MR"}), make_rule("pt", match={"modality": "PT"})]
    decision = route(make_attrs(), rules)
    assert decision.matched == ()
    assert not decision.routed
    assert decision.reason == NO_RULE_MATCHED
    assert [str(e.failure) for e in decision.explanations] == [
        "match.modality: expected 'MR', series has 'CT'",
        "match.modality: expected 'PT', series has 'CT'",
    ]
    record = decision.to_dict()
    assert record["routed"] is False and record["reason"] == "no rule matched"
    assert len(record["explanations"]) == 2


def test_no_rules_means_not_routed() -> None:
    decision = route(make_attrs(), [])
    assert not decision.routed and decision.reason == NO_RULE_MATCHED


def test_matched_rule_carries_every_action() -> None:
    rule = make_rule(
        "hn",
        model=["hn-oar@1.2.0", "body"],
        send_to=["tps", "archive"],
        outputs=["rtstruct", "seg"],
        structure_set_label="{model_name} {date}",
        priority=5,
        schedule={"start": "20:00", "end": "06:00"},
        complete_on="association_release",
    )
    match = route(make_attrs(), [rule]).matched[0]
    assert match.models == (ModelRef("hn-oar", "1.2.0"), ModelRef("body", None))
    assert match.send_to == ("tps", "archive")
    assert match.outputs == ("rtstruct", "seg")
    assert match.priority == 5
    assert match.complete_on == "association_release"
    assert match.schedule is not None and (match.schedule.start, match.schedule.end) == (
        "20:00",
        "06:00",
    )
    assert not match.may_run_at(datetime(2024, 5, 2, 12, 0))
    assert match.may_run_at(datetime(2024, 5, 2, 23, 0))


def test_structure_set_label_is_filled_in_and_cut_to_16_characters() -> None:
    rule = make_rule(structure_set_label="{model_name} {date}")
    match = route(make_attrs(), [rule]).matched[0]
    when = datetime(2024, 5, 2, 21, 30)
    assert match.render_label(model_name="body", model_version="1.0.0", when=when) == (
        "body 20240502"
    )
    long = match.render_label(model_name="hn-oar-extended", model_version="1", when=when)
    assert long == "hn-oar-extended"  # "hn-oar-extended 20240502" cut to 16, trailing space dropped


def test_model_reference_forms() -> None:
    assert ModelRef.parse("hn-oar") == ModelRef("hn-oar", None)
    assert ModelRef.parse("hn-oar@1.2.0") == ModelRef("hn-oar", "1.2.0")
    assert str(ModelRef("hn-oar", "1.2.0")) == "hn-oar@1.2.0"


def test_a_rule_may_choose_the_nnunet_mode_and_a_typo_is_refused() -> None:
    import pytest
    from pydantic import ValidationError

    rules = [make_rule("ct", match={"modality": "CT"}, model="pelvis", nnunet_mode="fast")]
    (match,) = route(make_attrs(), rules).matched
    assert match.nnunet_mode == "fast"
    assert match.to_dict()["nnunet_mode"] == "fast"
    assert route(make_attrs(), [make_rule("x", model="pelvis")]).matched[0].nnunet_mode is None
    with pytest.raises(ValidationError, match="nnunet_mode"):
        make_rule("bad", model="pelvis", nnunet_mode="quick")
